import Glibc

/// A value behind a pthread mutex, for state shared between the control and loop threads.
///
/// Not `Synchronization.Mutex`: when contended, it hands the lock over through the kernel
/// (FUTEX_LOCK_PI) inside the Swift runtime, which is not built for ThreadSanitizer, so TSan
/// misses that ordering and reports races on data the lock does protect. TSan intercepts
/// pthread mutexes. Not for per-frame work: the packet path takes no lock.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked Sendable: `value` is only read or written with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        // SAFETY: allocated once and never moved or copied (a pthread mutex must stay put);
        // initialised before use, destroyed and freed in deinit when no one can hold it.
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
