/* fork_slot_setup.c -- fork() while another thread makes the process's first allocation (the
 * counter-slot set-up, which holds a lock across membarrier registration): the child's first
 * allocation must not deadlock. */
#include "nativemem.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
static nm_allocator_t *A;
static volatile int started;
static void *worker(void *arg) {
    (void)arg;
    started = 1;
    nm_free(A, nm_malloc(A, 16)); /* the process's first allocation: sets up the counter slots */
    return NULL;
}
int main(void) {
    pthread_t t;
    pid_t pid;
    int status;
    A = nm_allocator_clone(nm_allocator_libc(), "forky");
    pthread_create(&t, NULL, worker, NULL);
    while (!started) {}
    usleep(200);
    pid = fork();
    if (pid == 0) {
        alarm(5);
        nm_free(A, nm_malloc(A, 16));
        _exit(0);
    }
    waitpid(pid, &status, 0);
    pthread_join(t, NULL);
    if (WIFSIGNALED(status)) { printf("child killed by signal %d (hung)\n", WTERMSIG(status)); return 1; }
    printf("ok\n");
    return 0;
}
