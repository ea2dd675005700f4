#include <seccomp.h>
#include <linux/sched.h>
#include <linux/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// SCMP_ACT_ERRNO is a function-like macro, which Swift does not import.
static inline uint32_t tw_scmp_act_errno(uint16_t error) { return SCMP_ACT_ERRNO(error); }

// prctl is variadic, which Swift does not import.
static inline int tw_set_not_dumpable(void) { return (int)syscall(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0); }
