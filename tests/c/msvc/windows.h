/* stand-in (see README): the Windows API the C core uses, as the SDK declares it */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <intrin.h>
#define WINAPI __stdcall
#define NTAPI __stdcall
typedef int BOOL;
typedef unsigned long DWORD, ULONG;
typedef void *HANDLE, *LPVOID, *PVOID;
typedef const void *LPCVOID;
typedef size_t SIZE_T;
typedef DWORD *PDWORD;
typedef union _LARGE_INTEGER { struct { DWORD LowPart; long HighPart; } u; long long QuadPart; } LARGE_INTEGER;
typedef struct _SYSTEM_INFO {
    unsigned short wProcessorArchitecture, wReserved;
    DWORD dwPageSize;
    LPVOID lpMinimumApplicationAddress, lpMaximumApplicationAddress;
    uintptr_t dwActiveProcessorMask;
    DWORD dwNumberOfProcessors, dwProcessorType, dwAllocationGranularity;
    unsigned short wProcessorLevel, wProcessorRevision;
} SYSTEM_INFO;
typedef struct _RTL_SRWLOCK { PVOID Ptr; } SRWLOCK, *PSRWLOCK;
#define SRWLOCK_INIT {0}
typedef struct _SECURITY_ATTRIBUTES SECURITY_ATTRIBUTES;
typedef DWORD(WINAPI *LPTHREAD_START_ROUTINE)(LPVOID);
typedef void(NTAPI *PFLS_CALLBACK_FUNCTION)(PVOID);
#define INFINITE 0xFFFFFFFFu
#define MEM_COMMIT 0x1000u
#define MEM_RESERVE 0x2000u
#define MEM_RELEASE 0x8000u
#define PAGE_NOACCESS 0x01u
#define PAGE_READWRITE 0x04u
#define FLS_OUT_OF_INDEXES ((DWORD)0xFFFFFFFF)
#define HEAP_ZERO_MEMORY 0x08u
void WINAPI InitializeSRWLock(PSRWLOCK lock);
void WINAPI AcquireSRWLockExclusive(PSRWLOCK lock);
void WINAPI ReleaseSRWLockExclusive(PSRWLOCK lock);
void WINAPI FlushProcessWriteBuffers(void);
DWORD WINAPI FlsAlloc(PFLS_CALLBACK_FUNCTION callback);
BOOL WINAPI FlsSetValue(DWORD index, PVOID value);
PVOID WINAPI FlsGetValue(DWORD index);
HANDLE WINAPI GetProcessHeap(void);
LPVOID WINAPI HeapAlloc(HANDLE heap, DWORD flags, SIZE_T n);
BOOL WINAPI HeapFree(HANDLE heap, DWORD flags, LPVOID p);
HANDLE WINAPI CreateThread(SECURITY_ATTRIBUTES *sa, SIZE_T stack, LPTHREAD_START_ROUTINE fn, LPVOID arg, DWORD flags,
                           DWORD *id);
DWORD WINAPI WaitForSingleObject(HANDLE h, DWORD ms);
BOOL WINAPI CloseHandle(HANDLE h);
BOOL WINAPI SwitchToThread(void);
BOOL WINAPI QueryPerformanceFrequency(LARGE_INTEGER *f);
BOOL WINAPI QueryPerformanceCounter(LARGE_INTEGER *c);
void WINAPI GetSystemInfo(SYSTEM_INFO *si);
LPVOID WINAPI VirtualAlloc(LPVOID p, SIZE_T n, DWORD type, DWORD protect);
BOOL WINAPI VirtualFree(LPVOID p, SIZE_T n, DWORD type);
BOOL WINAPI VirtualProtect(LPVOID p, SIZE_T n, DWORD protect, PDWORD old);
void WINAPI Sleep(DWORD ms);
#if defined(_M_ARM64) || defined(_M_ARM64EC)
#  define MemoryBarrier() __dmb(_ARM64_BARRIER_SY)
#elif defined(_M_X64)
#  define MemoryBarrier() __faststorefence()
#else
#  define MemoryBarrier() _mm_mfence()
#endif
