import Testing
import Glibc
import SystemCalls
@testable import TapwireDaemon

/// ASan's and TSan's runtimes make system calls of their own (they run the suites under
/// Tools/sanitizers.sh), which the daemon's list does not hold: a kill there says nothing
/// about tapwire. The plain run of the suites checks the filter.
private let underSanitizer = dlsym(nil, "__asan_init") != nil || dlsym(nil, "__tsan_init") != nil
private let sanitizerNote: Comment = "not under a sanitizer: its runtime's own system calls are outside tapwire's list"

/// The seccomp allow-list tapwire serves under, installed in a child process (an exit test)
/// exactly as the daemon installs it.
@Suite struct SandboxTests {
    @Test(.enabled(if: !underSanitizer, sanitizerNote))
    func executingAProgramKillsTheProcess() async {
        await #expect(processExitsWith: .signal(SIGSYS)) {
            try Sandbox.installFilter(mode: .kill)
            runTrue()
            exit(3) // not reached: execve either ran /bin/true (exit 0) or killed us
        }
    }

    @Test(.enabled(if: !underSanitizer, sanitizerNote))
    func forkingKillsTheProcess() async {
        await #expect(processExitsWith: .signal(SIGSYS)) {
            try Sandbox.installFilter(mode: .kill)
            let child = fork()
            if child == 0 { _exit(0) }
            exit(3)
        }
    }

    @Test(.enabled(if: !underSanitizer, sanitizerNote))
    func whatServingNeedsStillWorks() async {
        await #expect(processExitsWith: .success) {
            try Sandbox.installFilter(mode: .kill)
            // A thread (clone with CLONE_THREAD, after clone3 was refused), an eventfd in an
            // epoll carrying a count, a unix socket, a mapping: calls the daemon makes.
            var thread = pthread_t()
            guard pthread_create(&thread, nil, { _ in nil }, nil) == 0, pthread_join(thread, nil) == 0 else { exit(4) }
            let event = try EventFD.make()
            let poll = try Epoll()
            try poll.add(event.raw, events: Epoll.readable, token: 1)
            EventFD.signal(event.raw)
            var count: UInt64 = 0
            guard read(event.raw, &count, 8) == 8, count == 1 else { exit(5) }
            let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard unix >= 0, close(unix) == 0 else { exit(6) }
            guard let map = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  map != MAP_FAILED, munmap(map, 4096) == 0 else { exit(7) }
            exit(0)
        }
    }

    @Test func logModeLetsTheCallThrough() async {
        await #expect(processExitsWith: .success) {
            try Sandbox.installFilter(mode: .log)
            runTrue() // /bin/true exits 0
            exit(3)
        }
    }
}

/// execve("/bin/true"): returns only if the call failed.
private func runTrue() {
    guard let path = strdup("/bin/true") else { return }
    var argv: [UnsafeMutablePointer<CChar>?] = [path, nil]
    var envp: [UnsafeMutablePointer<CChar>?] = [nil]
    execve(path, &argv, &envp)
}
