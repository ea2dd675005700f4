import Glibc
import ArgumentParser
import CSeccomp
import GuestMemory
import TapDevice

/// `--seccomp`: what happens to a system call outside tapwire's allow-list once it serves.
public enum SeccompMode: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// The process dies with SIGSYS.
    case kill
    /// The call goes ahead and the kernel logs it (audit type 1326, see dmesg): for finding
    /// what the list lacks.
    case log
    /// No filter.
    case off
}

public struct SandboxError: Error, CustomStringConvertible {
    public let description: String
}

/// What tapwire confines itself to once start-up is over (the TAP, the sockets and the io_uring
/// rings are open and the capabilities are gone): a seccomp allow-list of system calls for
/// every thread, with no_new_privs, and resource limits. A guest or frontend that took over
/// the process could still only do what serving a VM needs.
public enum Sandbox {
    /// One rule: a system call, allowed (or answered with `action`) outright or only with
    /// given arguments.
    struct Rule {
        let name: String
        let conditions: [scmp_arg_cmp]
        let action: UInt32

        init(_ name: String, _ conditions: [scmp_arg_cmp] = [], action: UInt32 = SCMP_ACT_ALLOW) {
            self.name = name
            self.conditions = conditions
            self.action = action
        }
    }

    /// Allowed with any arguments: what the packet path, the vhost-user connection, the control
    /// API (SwiftNIO, Foundation), logging and the Swift runtime call after start-up. Found by
    /// running every check in `make test` with `--seccomp log` and reading the kernel's log.
    static let allowed: [String] = [
        // Frames, vhost-user messages and the API.
        "read", "pread64", "write", "readv", "writev", "recvmsg", "sendmsg", "recvfrom", "sendto", "io_uring_enter",
        // Events and timers.
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "timerfd_create", "timerfd_settime",
        // Sockets: the client mode reconnects, the control API accepts.
        "connect", "accept4", "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername",
        // Descriptors, and the sockets' paths removed at exit (SwiftNIO stats the API socket
        // first; glibc's fstat is newfstatat too).
        "close", "fcntl", "fstat", "newfstatat", "unlink",
        // Guest memory and the dirty log arrive as fds to map; the allocator maps and advises.
        "munmap", "mremap", "madvise", "brk",
        // Threads: synchronisation, signals, the runtime's bookkeeping.
        "futex", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity", "getpriority", "setpriority",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "gettid", "getpid", "tgkill",
        "restart_syscall", "membarrier",
        // Time, randomness, identity (a connect refused with EACCES names the uid and gid).
        "clock_gettime", "clock_nanosleep", "nanosleep", "getrandom", "getuid", "geteuid", "getgid", "getegid",
        // The end.
        "exit", "exit_group",
    ]

    /// The rules with arguments, and the calls answered with an error instead of run.
    static var rules: [Rule] {
        var rules = allowed.map { Rule($0) }
        // Threads only: a clone without CLONE_THREAD would be a new process.
        rules.append(Rule("clone", [masked(0, UInt64(CLONE_THREAD), equals: UInt64(CLONE_THREAD))]))
        // No new executable memory: nothing is loaded or generated once serving.
        rules.append(Rule("mmap", [masked(2, UInt64(PROT_EXEC), equals: 0)]))
        rules.append(Rule("mprotect", [masked(2, UInt64(PROT_EXEC), equals: 0)]))
        // Reading only: libdispatch (under Swift concurrency, which the control API uses)
        // counts its runnable threads in /proc/PID/stat. Nothing is created, written or truncated.
        let writing = Glibc.O_WRONLY | Glibc.O_RDWR | Glibc.O_CREAT | Glibc.O_TRUNC | Glibc.O_APPEND
        rules.append(Rule("openat", [masked(2, UInt64(writing), equals: 0)]))
        // Naming threads.
        rules.append(Rule("prctl", [equal(0, UInt64(PR_SET_NAME))]))
        rules.append(Rule("prctl", [equal(0, UInt64(PR_GET_NAME))]))
        // Unix sockets (the client mode's reconnects); the TAP's MTU is read through an inet
        // datagram socket.
        rules.append(Rule("socket", [equal(0, UInt64(AF_UNIX))]))
        rules.append(Rule("socket", [equal(0, UInt64(AF_INET))]))
        for request in allowedIoctls { rules.append(Rule("ioctl", [equal(1, request)])) }
        // clone3 passes its flags in memory, where a filter cannot look: refused with ENOSYS,
        // glibc then falls back to clone, whose flags the rule above checks.
        rules.append(Rule("clone3", action: tw_scmp_act_errno(UInt16(ENOSYS))))
        return rules
    }

    private static func equal(_ argument: UInt32, _ value: UInt64) -> scmp_arg_cmp {
        scmp_arg_cmp(arg: argument, op: SCMP_CMP_EQ, datum_a: value, datum_b: 0)
    }

    private static func masked(_ argument: UInt32, _ mask: UInt64, equals value: UInt64) -> scmp_arg_cmp {
        scmp_arg_cmp(arg: argument, op: SCMP_CMP_MASKED_EQ, datum_a: mask, datum_b: value)
    }

    /// The ioctls that serving calls: the TAP's, and non-blocking mode and terminal checks on
    /// sockets and stdio.
    static let allowedIoctls: [UInt64] = Tap.servingIoctls.map(UInt64.init) + [UInt64(FIONBIO), UInt64(FIONREAD), UInt64(TCGETS)]

    /// Installs the allow-list on every thread of the process (TSYNC), with no_new_privs.
    public static func installFilter(mode: SeccompMode) throws(SandboxError) {
        guard mode != .off else { return }
        guard let filter = seccomp_init(mode == .kill ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_LOG) else {
            throw SandboxError(description: "seccomp_init failed")
        }
        defer { seccomp_release(filter) }
        try check(seccomp_attr_set(filter, SCMP_FLTATR_CTL_NNP, 1), "no_new_privs")
        try check(seccomp_attr_set(filter, SCMP_FLTATR_CTL_TSYNC, 1), "thread synchronisation")
        for rule in rules {
            let number = seccomp_syscall_resolve_name(rule.name)
            // A call this architecture does not have (clone3 before libseccomp knew it, say).
            guard number != __NR_SCMP_ERROR else { continue }
            let rc = rule.conditions.withUnsafeBufferPointer {
                seccomp_rule_add_array(filter, rule.action, number, UInt32($0.count), $0.baseAddress)
            }
            try check(rc, "the rule for \(rule.name)")
        }
        try check(seccomp_load(filter), "loading the filter")
    }

    private static func check(_ rc: Int32, _ what: String) throws(SandboxError) {
        guard rc == 0 else { throw SandboxError(description: "seccomp: \(what): \(String(cString: strerror(-rc)))") }
    }

    // MARK: - Resource limits

    /// Descriptors a tapwire needs beside its queues: stdio, epoll, the listener, the
    /// connection, signal and mailbox fds, the control API's threads and clients.
    static let baseDescriptors: rlim_t = 128
    /// Per queue pair: two kicks, two calls, two error fds, its TAP queue, its io_uring, its
    /// worker's epoll, mailbox and timers.
    static let descriptorsPerQueuePair: rlim_t = 16
    /// Guest memory regions (as many as GET_MAX_MEM_SLOTS offers) and the dirty log.
    static let memoryRegionDescriptors = rlim_t(GuestMemoryMap.maxRegions) + 1

    /// RLIMIT_NOFILE sized to what the device can use; no core dumps and not dumpable (a core
    /// would hold guest memory, and a non-dumpable process cannot be ptraced or have its
    /// /proc/PID/mem read by its own user). RLIMIT_NPROC is left alone: it counts the threads of
    /// every process of the user (several VMs' tapwires may share one), root is exempt from it,
    /// and the filter refuses new processes anyway.
    public static func limitResources(queuePairs: Int) throws(SandboxError) {
        let descriptors = baseDescriptors + descriptorsPerQueuePair * rlim_t(queuePairs) + memoryRegionDescriptors
        try setLimit(RLIMIT_NOFILE, descriptors, "RLIMIT_NOFILE")
        try setLimit(RLIMIT_CORE, 0, "RLIMIT_CORE")
        guard tw_set_not_dumpable() == 0 else {
            throw SandboxError(description: "prctl(PR_SET_DUMPABLE, 0): \(String(cString: strerror(errno)))")
        }
    }

    private static func setLimit(_ resource: __rlimit_resource, _ value: rlim_t, _ name: String) throws(SandboxError) {
        let resource = __rlimit_resource_t(resource.rawValue)
        var current = rlimit()
        guard getrlimit(resource, &current) == 0 else {
            throw SandboxError(description: "getrlimit(\(name)): \(String(cString: strerror(errno)))")
        }
        // Never above the hard limit the parent set.
        let wanted = min(value, current.rlim_max)
        var limit = rlimit(rlim_cur: wanted, rlim_max: wanted)
        guard setrlimit(resource, &limit) == 0 else {
            throw SandboxError(description: "setrlimit(\(name), \(wanted)): \(String(cString: strerror(errno)))")
        }
    }
}
