/* platform.c -- OS page mapping and protection behind platform.h's small interface. */
#include "nm_internal.h"

#if defined(NM_OS_WINDOWS)

size_t nm_os_page_size(void) {
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    return (size_t)si.dwPageSize;
}
void *nm_os_map(size_t size) {
    return VirtualAlloc(NULL, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
}
void nm_os_unmap(void *p, size_t size) {
    (void)size;
    if (p) VirtualFree(p, 0, MEM_RELEASE);
}
int nm_os_protect(void *p, size_t size, int access) {
    DWORD old;
    return VirtualProtect(p, size, access ? PAGE_READWRITE : PAGE_NOACCESS, &old) ? 0 : -1;
}

#else

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#  define MAP_ANONYMOUS MAP_ANON
#endif

size_t nm_os_page_size(void) {
    static size_t cached;
    if (cached == 0) {
        long v = sysconf(_SC_PAGESIZE);
        cached = v > 0 ? (size_t)v : 4096;
    }
    return cached;
}
void *nm_os_map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
void nm_os_unmap(void *p, size_t size) {
    if (p) munmap(p, size);
}
int nm_os_protect(void *p, size_t size, int access) {
    return mprotect(p, size, access ? (PROT_READ | PROT_WRITE) : PROT_NONE);
}

#endif
