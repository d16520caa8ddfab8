/* A stand-in guest whose PSS differs from its RSS, for tests/twins.py.
 *
 *   NAME SHARED_KIB PRIVATE_KIB COPIES
 *
 * touches SHARED_KIB of anonymous memory, forks into COPIES processes that all map
 * those pages copy-on-write (each counts them in full in its RSS, and 1/COPIES of
 * them in its PSS), then each touches PRIVATE_KIB of its own, prints its pid on a
 * line and sleeps until killed.  Built static, so no page of it is shared with any
 * other program on the machine: its PSS does not move when other processes start.
 * The process name is the name of the file it runs from (e.g. "kvm").
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

static void touch(size_t kib)
{
    if (kib == 0)
        return;
    char *p = mmap(NULL, kib * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        _exit(2);
    for (size_t i = 0; i < kib * 1024; i += 4096)
        p[i] = 1;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 64;
    size_t shared = strtoul(argv[1], NULL, 10), private_kib = strtoul(argv[2], NULL, 10);
    int copies = atoi(argv[3]);
    touch(shared);
    for (int i = 1; i < copies; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);  /* never outlive the first copy */
            break;
        }
    }
    touch(private_kib);
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
    if (write(1, line, n) != n)
        return 1;
    for (;;)
        pause();
}
