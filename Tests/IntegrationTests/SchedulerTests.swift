import Foundation
import Testing
import SystemCalls
@testable import TapwireDaemon

/// `--sched-slice-us`: the slice tapwire asks for at start, and that the threads it starts
/// afterwards (queue workers, the control plane) inherit it.
@Suite struct SchedulerTests {
    /// The slice the scheduler gives the calling thread (ns), or nil when the kernel does not
    /// show it (/proc/thread-self/sched needs CONFIG_SCHED_DEBUG; se.slice, EEVDF).
    static func currentSlice() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/thread-self/sched", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("se.slice") {
            return line.split(separator: ":").last.flatMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        }
        return nil
    }

    /// What the threads saw; each field is written before the semaphore the reader waits on.
    final class Observed: @unchecked Sendable {
        var requested: Result<Void, SystemError>?
        var own: UInt64?
        var child: UInt64?
    }

    @Test func aRequestedSliceIsInheritedByNewThreads() throws {
        // On a thread of its own, so that no other test's threads change.
        let observed = Observed()
        let done = DispatchSemaphore(value: 0)
        let parent = Thread {
            observed.requested = Result { () throws(SystemError) in try Scheduler.requestSlice(microseconds: 250) }
            observed.own = Self.currentSlice()
            let childDone = DispatchSemaphore(value: 0)
            let thread = Thread { observed.child = Self.currentSlice(); childDone.signal() }
            thread.start()
            childDone.wait()
            done.signal()
        }
        parent.start()
        done.wait()
        try #require(observed.requested).get()
        guard let own = observed.own else {
            print("SchedulerTests: this kernel does not show se.slice in /proc/thread-self/sched; only the request was checked")
            return
        }
        #expect(own == 250_000)
        #expect(observed.child == 250_000)
    }

    @Test(arguments: ["50", "200000"])
    func sliceOutsideTheKernelsRangeIsRefused(value: String) {
        do {
            _ = try TapwireCommand.parse(["--socket-path", "/tmp/x.sock", "--tap", "t0", "--sched-slice-us", value])
            Issue.record("--sched-slice-us \(value) was accepted")
        } catch {
            #expect(TapwireCommand.message(for: error) == "--sched-slice-us must be 0 or between 100 and 100000 microseconds, not \(value)")
        }
    }

    @Test func theDefaultAndZero() throws {
        #expect(try TapwireCommand.parse(["--socket-path", "/tmp/x.sock", "--tap", "t0"]).schedSliceUs == 100)
        #expect(try TapwireCommand.parse(["--socket-path", "/tmp/x.sock", "--tap", "t0", "--sched-slice-us", "0"]).schedSliceUs == 0)
    }
}
