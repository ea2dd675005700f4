import Glibc
import CTapwire
import SystemCalls
import Virtqueue
import GuestMemory
import RateLimiter
import PortSecurity

/// What a service call leaves behind, so the loop knows when to come back.
public enum ServiceOutcome: Equatable, Sendable {
    /// Nothing more to do until the next event.
    case idle
    /// The budget ran out with work left; service again after other queues.
    case moreWork
    /// The rate limiter refused; come back after this many nanoseconds.
    case throttled(nanoseconds: UInt64)
    /// Receive only: the guest posted no (or too few) buffers; wait for its kick.
    case needBuffers
    /// Transmit only: frames were sent and the ring is empty, but kicks stay off for now;
    /// look again shortly (the guest is likely mid-burst and need not exit to kick).
    case drained
}

/// Largest chain a transmit may describe: a 64 KiB GSO frame plus headers.
let maxTransmitChainBytes: UInt64 = 65536 + 256

/// Frames per io_uring submission on transmit (at most 64: completions are tracked in a UInt64).
let transmitBatchLimit = 64

/// Largest batch of TAP reads per io_uring submission on receive.
let receiveBatchLimit = 64

/// Within a batch, completions are published (and the guest signalled if it asked) after this
/// many bytes or frames (a power of two), so the guest works in parallel with us.
let publishEveryBytes = 64 * 1024
let publishEveryFrames = 32

/// A transmit slot's room for the checked copy of a frame's start (port security).
let headerCopyStride = NetHeader.largestSize + PortFilter.inspectedBytes

extension NetDevice {
    /// Drains the guest's transmit ring into the TAP, iovecs straight into guest memory: with
    /// io_uring, up to `transmitBatchLimit` frames per syscall; without it, one writev per
    /// chain. Used entries are published and the guest signalled once per batch.
    /// With `holdKicks`, a service that moved at least `holdKicksFrom` frames and emptied the
    /// ring leaves kicks off and returns `.drained` (see `TransmitPollPolicy`).
    public func serviceTransmit(pair: Int, now: UInt64, holdKicks: Bool = false, holdKicksFrom: Int = 1) -> ServiceOutcome {
        let queue = queues[2 * pair + 1]
        guard let ring = queue.ring, queue.fault == nil else { return .idle }
        let tapFD = tap?.queues[pair].raw ?? -1
        let tapRing = queue.tapRing
        let batchLimit = min(tapRing?.entries ?? 1, transmitBatchLimit)
        let vectors = queue.vectors
        let inFlight = queue.pending
        let headerSize = self.headerSize
        let features = ackedFeatures
        let portFilter = self.portFilter
        var outcome = ServiceOutcome.idle
        var frames = 0
        var completed = 0
        var batched = 0
        var unpublishedBytes = 0
        var header = tw_virtio_net_hdr()
        vectors.removeAll()
        do {
            while true {
                if frames >= config.batchBudget { outcome = .moreWork; break }
                if batched > 0 && (batched == batchLimit || vectors.count >= vectors.capacity / 2) {
                    sendTransmitBatch(queue, ring, count: batched, tapFD: tapFD, completed: &completed, unpublishedBytes: &unpublishedBytes)
                    batched = 0
                }
                if batched == 0 { vectors.removeAll() }
                guard let chain = try ring.popChain(into: vectors, writable: false, maxBytes: maxTransmitChainBytes) else {
                    if holdKicks && frames > 0 && frames >= holdKicksFrom {
                        ring.disableKicks()
                        outcome = .drained
                        break
                    }
                    if try ring.enableKicks() { continue }
                    break
                }
                frames += 1
                if let fault = chain.fault {
                    if batched > 0, case .tooManySegments = fault {
                        // It did not fit beside the batch: send the batch, then take it again alone.
                        ring.undoPop()
                        frames -= 1
                        sendTransmitBatch(queue, ring, count: batched, tapFD: tapFD, completed: &completed, unpublishedBytes: &unpublishedBytes)
                        batched = 0
                        continue
                    }
                    noteBadChain(queue, fault)
                    ring.addUsed(head: chain.head, length: 0)
                    continue
                }
                guard queue.enabled else {
                    queue.stats.drop(.queueDisabled)
                    ring.addUsed(head: chain.head, length: 0)
                    continue
                }
                let frameBytes = Int(chain.bytes) - headerSize
                guard frameBytes >= 0 else {
                    queue.stats.drop(.badHeader)
                    ring.addUsed(head: chain.head, length: 0)
                    continue
                }
                if !queue.limiter.isUnlimited {
                    if case .throttled(let wait) = queue.limiter.admit(bytes: UInt64(frameBytes), now: now) {
                        // Shaped, not dropped: the chain goes back to the ring until tokens exist.
                        ring.undoPop()
                        frames -= 1
                        noteThrottled(queue, now: now)
                        outcome = .throttled(nanoseconds: wait)
                        break
                    }
                }
                withUnsafeMutableBytes(of: &header) {
                    _ = vectors.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<headerSize]), startingAt: chain.firstVector)
                }
                if let problem = NetHeader.validateTransmit(header, frameLength: frameBytes, features: features) {
                    queue.stats.drop(.badHeader)
                    noteBadHeader(queue, problem)
                    ring.addUsed(head: chain.head, length: 0)
                    continue
                }
                if let portFilter {
                    switch checkTransmit(queue, portFilter, chain.firstVector, frameBytes: frameBytes, slot: tapRing != nil ? batched : 0) {
                    case .pass:
                        break
                    case .refused(let violation):
                        notePortViolation(queue, violation)
                        ring.addUsed(head: chain.head, length: 0)
                        continue
                    case .noRoom where batched > 0:
                        // The copy's iovec did not fit beside the batch: send it, take the chain again.
                        ring.undoPop()
                        frames -= 1
                        sendTransmitBatch(queue, ring, count: batched, tapFD: tapFD, completed: &completed, unpublishedBytes: &unpublishedBytes)
                        batched = 0
                        continue
                    case .noRoom:
                        noteBadChain(queue, .tooManySegments(limit: vectors.capacity - 1))
                        ring.addUsed(head: chain.head, length: 0)
                        continue
                    }
                }
                let vectorCount = vectors.count - chain.firstVector
                if let tapRing {
                    tapRing.prepareWritev(fileIndex: 0, vectors.vectors + chain.firstVector, count: vectorCount, tag: UInt64(batched))
                    inFlight[batched] = PendingChain(head: chain.head, capacity: UInt32(frameBytes), firstVector: chain.firstVector,
                                                     vectorCount: vectorCount)
                    batched += 1
                    continue
                }
                if tapFD >= 0 {
                    let written = VectorIO.writev(tapFD, vectors.vectors + chain.firstVector, count: vectorCount)
                    if written == -Int(EAGAIN) {
                        ring.undoPop()
                        frames -= 1
                        outcome = .moreWork
                        break
                    }
                    if written < 0 {
                        completeTransmit(queue, ring, head: chain.head, frameBytes: frameBytes, error: Int32(-written),
                                         completed: &completed, unpublishedBytes: &unpublishedBytes)
                        continue
                    }
                }
                completeTransmit(queue, ring, head: chain.head, frameBytes: frameBytes, error: 0, completed: &completed,
                                 unpublishedBytes: &unpublishedBytes)
            }
        } catch {
            if batched > 0 {
                sendTransmitBatch(queue, ring, count: batched, tapFD: tapFD, completed: &completed, unpublishedBytes: &unpublishedBytes)
            }
            failQueue(queue, "\(error)")
            return .idle
        }
        if batched > 0 {
            sendTransmitBatch(queue, ring, count: batched, tapFD: tapFD, completed: &completed, unpublishedBytes: &unpublishedBytes)
        }
        // While polling, avail_event stays where it was so the guest does not kick.
        if outcome != .drained { ring.updateAvailEvent() }
        queue.signalGuest()
        endThrottleIfNeeded(queue, now: now, throttled: outcome)
        return outcome
    }

    /// Submits the `count` writes prepared in the queue's io_uring as one syscall and completes
    /// their chains. Chains are returned only once the kernel has finished with their buffers.
    private func sendTransmitBatch(_ queue: QueueState, _ ring: SplitQueue, count: Int, tapFD: Int32, completed: inout Int,
                                   unpublishedBytes: inout Int) {
        guard let tapRing = queue.tapRing else { return }
        let inFlight = queue.pending
        let submitted = tapRing.submitAndWait(count)
        queue.stats.tapBatches &+= 1
        if submitted < 0 {
            // Nothing reached the kernel (it could not take the batch): one writev each instead.
            tapRing.discardPrepared()
            for i in 0..<count {
                let entry = inFlight[i]
                let written = VectorIO.writev(tapFD, queue.vectors.vectors + entry.firstVector, count: entry.vectorCount)
                completeTransmit(queue, ring, head: entry.head, frameBytes: Int(entry.capacity), error: written < 0 ? Int32(-written) : 0,
                                 completed: &completed, unpublishedBytes: &unpublishedBytes)
            }
            return
        }
        var pending = count
        var reaped: UInt64 = 0 // bit i: tag i is done (a batch is at most 64)
        while pending > 0 {
            guard let (tag, result) = tapRing.reap() else {
                // A signal ended the wait before every write finished: wait for the rest.
                let waited = tapRing.submitAndWait(pending)
                if waited < 0 {
                    // Not seen with a live ring. If it happens the ring is given up (closing it
                    // settles what it still holds), writes go out one writev at a time from
                    // now on, and the rest of this batch is returned so the guest does not wait.
                    logger.error("queue \(queue.index): waiting for TAP writes failed (\(String(cString: strerror(Int32(-waited))))); using writev from now on")
                    dropTapRing(pair: queue.pair)
                    for i in 0..<count where reaped & (1 << UInt64(i)) == 0 {
                        let entry = inFlight[i]
                        completeTransmit(queue, ring, head: entry.head, frameBytes: Int(entry.capacity), error: EIO,
                                         completed: &completed, unpublishedBytes: &unpublishedBytes)
                    }
                    return
                }
                continue
            }
            pending -= 1
            reaped |= 1 << tag
            let entry = inFlight[Int(tag)]
            // EAGAIN too counts as an error here: a TAP write blocks only if someone set a
            // send buffer limit (TUNSETSNDBUF), and the batch cannot take one frame back.
            completeTransmit(queue, ring, head: entry.head, frameBytes: Int(entry.capacity), error: result < 0 ? -result : 0,
                             completed: &completed, unpublishedBytes: &unpublishedBytes)
        }
    }

    @inline(__always)
    private func completeTransmit(_ queue: QueueState, _ ring: SplitQueue, head: UInt16, frameBytes: Int, error: Int32,
                                  completed: inout Int, unpublishedBytes: inout Int) {
        ring.addUsed(head: head, length: 0)
        if error != 0 {
            queue.stats.drop(.tapError)
            noteTapError(queue, error)
            return
        }
        completed += 1
        queue.stats.frames &+= 1
        queue.stats.bytes &+= UInt64(frameBytes)
        // The guest's TCP keeps only a little in flight until completions come back (TCP
        // small queues): hand them back during a long batch, not only after it.
        queue.publishIfDue(&unpublishedBytes, adding: frameBytes, frames: completed)
    }

    /// Moves frames from the TAP into the guest's receive ring: one readv per frame straight
    /// into the guest's buffers; with MRG_RXBUF a frame spans as many chains as it needs and
    /// num_buffers says how many.
    public func serviceReceive(pair: Int, now: UInt64) -> ServiceOutcome {
        let queue = queues[2 * pair]
        guard let ring = queue.ring, queue.fault == nil, queue.enabled, let tap else { return .idle }
        // Batches do not mix with the limiter: it charges per frame read, and a batch would
        // overshoot it by up to a batch of frames.
        if let tapRing = queue.tapRing, queue.limiter.isUnlimited,
           let outcome = receiveBatches(queue, ring, tapRing) { return outcome }
        let tapFD = tap.queues[pair].raw
        let vectors = queue.vectors
        let pending = queue.pending
        let mergeable = mergeableRxBuffers
        let needed = UInt64(mergeable ? rxFrameCapacityNeeded : headerSize + 1)
        let writesNumBuffers = headerSize == NetHeader.largestSize
        let portFilter = self.portFilter
        var pendingCount = 0
        var pendingStart = 0
        var capacity: UInt64 = 0
        var frames = 0
        var unpublishedBytes = 0
        var outcome = ServiceOutcome.idle
        vectors.removeAll()
        do {
            while true {
                if frames >= config.batchBudget { outcome = .moreWork; break }
                if !queue.limiter.isUnlimited, case let wait = queue.limiter.nanosecondsUntilReady(now: now), wait > 0 {
                    // In debt from earlier frames: stop reading; the kernel queues meanwhile.
                    noteThrottled(queue, now: now)
                    outcome = .throttled(nanoseconds: wait)
                    break
                }
                // Gather chains until the largest frame the TAP can hand over fits.
                if pendingStart > 0 && pendingStart == pendingCount {
                    pendingStart = 0
                    pendingCount = 0
                    vectors.removeAll()
                }
                while capacity < needed {
                    if pendingCount == 1024 || vectors.count >= vectors.capacity - 64 { break }
                    guard let chain = try ring.popChain(into: vectors, writable: true, maxBytes: UInt64(UInt32.max)) else { break }
                    queue.popSequence &+= 1
                    if let fault = chain.fault {
                        noteBadChain(queue, fault)
                        ring.addUsed(head: chain.head, length: 0)
                        continue
                    }
                    pending[pendingCount] = PendingChain(head: chain.head, capacity: UInt32(chain.bytes), firstVector: chain.firstVector,
                                                         popSequence: queue.popSequence)
                    pendingCount += 1
                    capacity += chain.bytes
                    if !mergeable { break }
                }
                if capacity < needed || pendingStart == pendingCount {
                    outcome = .needBuffers
                    break
                }
                let first = pending[pendingStart]
                let n = VectorIO.readv(tapFD, vectors.vectors + first.firstVector, count: min(vectors.count - first.firstVector, maxIOVectors))
                if n < 0 {
                    if n != -Int(EAGAIN) {
                        queue.stats.drop(.tapError)
                        noteTapError(queue, Int32(-n))
                    }
                    break
                }
                frames += 1
                if let portFilter, n > headerSize,
                   refusesReceive(portFilter, vectors, from: first.firstVector, frameBytes: n - headerSize) {
                    // Not published: the same chains take the next frame.
                    notePortViolation(queue, .notForThisVM)
                    continue
                }
                // Fill chains in order; the first chain's header learns how many were used.
                var remaining = UInt64(n)
                var used = 0
                repeat {
                    let chain = pending[pendingStart + used]
                    let length = min(remaining, UInt64(chain.capacity))
                    ring.addUsed(head: chain.head, length: UInt32(length))
                    capacity -= UInt64(chain.capacity)
                    remaining -= length
                    used += 1
                } while remaining > 0 && pendingStart + used < pendingCount
                if writesNumBuffers {
                    var count = UInt16(used)
                    withUnsafeBytes(of: &count) { vectors.write($0, at: 10, startingAt: first.firstVector) }
                }
                if let log = ring.dirtyLog {
                    logReceiveWrite(log, queue, ring, from: first.firstVector, count: vectors.count - first.firstVector,
                                    bytes: max(n, headerSize))
                }
                pendingStart += used
                if n < headerSize {
                    queue.stats.drop(.truncated)
                    continue
                }
                queue.stats.frames &+= 1
                queue.stats.bytes &+= UInt64(n - headerSize)
                if !queue.limiter.isUnlimited { queue.limiter.charge(bytes: UInt64(n - headerSize), now: now) }
                // Let the guest start on what is there while we keep filling: waiting for the
                // end of a long batch would leave its NAPI idle and ours waiting for buffers.
                queue.publishIfDue(&unpublishedBytes, adding: n, frames: frames)
            }
        } catch {
            failQueue(queue, "\(error)")
            return .idle
        }
        // Chains taken but not filled go back: undone if they were the last ones taken,
        // otherwise (a refused chain came after them) returned empty.
        let unused = pendingCount - pendingStart
        if unused > 0 {
            let firstUnused = pending[pendingStart]
            if queue.popSequence - firstUnused.popSequence + 1 == UInt64(unused) {
                ring.undoPop(UInt16(unused))
            } else {
                for i in pendingStart..<pendingCount { ring.addUsed(head: pending[i].head, length: 0) }
            }
        }
        vectors.removeAll()
        outcome = finishReceive(queue, ring, outcome, frames: frames)
        endThrottleIfNeeded(queue, now: now, throttled: outcome)
        return outcome
    }

    /// The end of a receive service call: asks for a kick if the guest's buffers ran out
    /// (going on instead if some came meanwhile), or keeps avail_event on our position; then
    /// signals the guest. Returns the outcome, `.moreWork` if buffers turned up.
    @inline(__always)
    private func finishReceive(_ queue: QueueState, _ ring: SplitQueue, _ outcome: ServiceOutcome, frames: Int) -> ServiceOutcome {
        var outcome = outcome
        if outcome == .needBuffers {
            // Ask for a kick when buffers arrive, unless some already did.
            if (try? ring.enableKicks()) == true && frames < config.batchBudget { outcome = .moreWork }
        } else {
            ring.updateAvailEvent()
        }
        queue.signalGuest()
        // Out of buffers, a held interrupt would only keep the guest from refilling them.
        if outcome == .needBuffers { queue.releaseHeldInterrupt(now: monotonicNanoseconds()) }
        return outcome
    }

    /// Receive through io_uring, a batch of reads per syscall, for guests whose buffers each
    /// hold the largest frame the TAP can hand over: then each read gets one chain and none is
    /// left half used. Returns nil (with everything so far published) when the next chain is
    /// smaller: the per-frame path gathers several chains for a frame.
    private func receiveBatches(_ queue: QueueState, _ ring: SplitQueue, _ tapRing: IOUring) -> ServiceOutcome? {
        let vectors = queue.vectors
        let slots = queue.pending
        let needed = UInt64(rxFrameCapacityNeeded)
        var frames = 0
        var unpublishedBytes = 0
        var outcome = ServiceOutcome.idle
        var smallerChain = false
        do {
            while true {
                if frames >= config.batchBudget { outcome = .moreWork; break }
                vectors.removeAll()
                var count = 0
                let wanted = min(queue.receiveBatch, config.batchBudget - frames, tapRing.freeSlots)
                while count < wanted {
                    guard let chain = try ring.popChain(into: vectors, writable: true, maxBytes: UInt64(UInt32.max)) else { break }
                    if let fault = chain.fault {
                        // Refused chains are returned at once, so only with an empty batch: the
                        // batch's unfilled chains must stay the last ones taken (they go back).
                        if count > 0 { ring.undoPop(); break }
                        noteBadChain(queue, fault)
                        ring.addUsed(head: chain.head, length: 0)
                        continue
                    }
                    guard chain.bytes >= needed else {
                        ring.undoPop()
                        smallerChain = true
                        break
                    }
                    let vectorCount = vectors.count - chain.firstVector
                    tapRing.prepareReadv(fileIndex: 0, vectors.vectors + chain.firstVector, count: vectorCount, tag: UInt64(count))
                    slots[count] = PendingChain(head: chain.head, capacity: UInt32(clamping: chain.bytes), firstVector: chain.firstVector,
                                                vectorCount: vectorCount, result: .min)
                    count += 1
                }
                if count == 0 {
                    if !smallerChain { outcome = .needBuffers }
                    break
                }
                let read = readBatch(queue, ring, tapRing, count: count, frames: &frames, unpublishedBytes: &unpublishedBytes)
                // Grow the batch while the TAP fills it; shrink it to what came when it did not.
                queue.receiveBatch = read == count ? min(count * 2, receiveBatchLimit) : max(read, 1)
                if read < count {
                    smallerChain = false // the TAP is empty: nothing for the per-frame path either
                    break
                }
                if smallerChain { break }
            }
        } catch {
            // Reads prepared for this batch must not reach the kernel with the next submission.
            tapRing.discardPrepared()
            failQueue(queue, "\(error)")
            return .idle
        }
        vectors.removeAll()
        if smallerChain {
            queue.signalGuest()
            return nil
        }
        return finishReceive(queue, ring, outcome, frames: frames)
    }

    /// Submits the `count` reads prepared in `tapRing` and returns the frames to the guest;
    /// chains left unfilled (the TAP ran dry, or port security refused the frame) go back to
    /// the ring. Returns how many reads brought a frame (those filled and those refused).
    private func readBatch(_ queue: QueueState, _ ring: SplitQueue, _ tapRing: IOUring, count: Int, frames: inout Int,
                           unpublishedBytes: inout Int) -> Int {
        let slots = queue.pending
        let vectors = queue.vectors
        let portFilter = self.portFilter
        var refused = 0
        queue.stats.tapBatches &+= 1
        if tapRing.submitAndWait(count) < 0 {
            // Nothing reached the kernel: give every chain back, read one by one from now on.
            tapRing.discardPrepared()
            ring.undoPop(UInt16(count))
            dropTapRing(pair: queue.pair)
            return 0
        }
        var pending = count
        while pending > 0 {
            guard let (tag, result) = tapRing.reap() else {
                // A signal ended the wait early: wait for the rest.
                if tapRing.submitAndWait(pending) < 0 {
                    logger.error("queue \(queue.index): waiting for TAP reads failed; reading one frame at a time from now on")
                    dropTapRing(pair: queue.pair)
                    for i in 0..<count where slots[i].result == Int.min { slots[i].result = -Int(EIO) }
                    break
                }
                continue
            }
            pending -= 1
            slots[Int(tag)].result = Int(result)
        }
        var filled = 0
        for slot in 0..<count {
            let result = slots[slot].result
            if result < 0 {
                if result != -Int(EAGAIN) {
                    queue.stats.drop(.tapError)
                    noteTapError(queue, Int32(-result))
                }
                continue
            }
            // The TAP reports a frame's whole length even when the buffer held less of it.
            var length = min(result, Int(slots[slot].capacity))
            if let portFilter, length > headerSize,
               refusesReceive(portFilter, vectors, from: slots[slot].firstVector, frameBytes: length - headerSize) {
                // Like a read that found nothing: the next frame moves into this chain.
                notePortViolation(queue, .notForThisVM)
                refused += 1
                continue
            }
            if filled != slot {
                // A frame arrived while the batch ran, after a read had found the TAP empty:
                // move it into the earlier chain so the unfilled chains are the last ones taken.
                length = vectors.copy(length, from: slots[slot].firstVector, count: slots[slot].vectorCount,
                                      to: slots[filled].firstVector, count: slots[filled].vectorCount)
            }
            let chain = slots[filled]
            filled += 1
            frames += 1
            ring.addUsed(head: chain.head, length: UInt32(length))
            if headerSize == NetHeader.largestSize {
                var one: UInt16 = 1
                withUnsafeBytes(of: &one) { vectors.write($0, at: 10, startingAt: chain.firstVector) }
            }
            if let log = ring.dirtyLog {
                logReceiveWrite(log, queue, ring, from: chain.firstVector, count: chain.vectorCount, bytes: max(length, headerSize))
            }
            if length < headerSize || length < result {
                queue.stats.drop(.truncated)
                continue
            }
            queue.stats.frames &+= 1
            queue.stats.bytes &+= UInt64(length - headerSize)
            queue.publishIfDue(&unpublishedBytes, adding: length, frames: frames)
        }
        if filled < count { ring.undoPop(UInt16(count - filled)) }
        return filled + refused
    }

    /// When the pair's first held interrupt is due (monotonic ns; 0: none held).
    @inline(__always)
    public func heldInterruptDeadline(pair: Int) -> UInt64 {
        let receive = queues[2 * pair].interruptHeldUntil
        let transmit = queues[2 * pair + 1].interruptHeldUntil
        if receive == 0 || transmit == 0 { return receive | transmit }
        return min(receive, transmit)
    }

    /// Sends the pair's held interrupts whose time has come (receive first: it carries a
    /// held transmit interrupt with it).
    public func releaseDueInterrupts(pair: Int, now: UInt64) {
        for index in 2 * pair...2 * pair + 1 where queues[index].interruptHeldUntil != 0 && queues[index].interruptHeldUntil <= now {
            queues[index].releaseHeldInterrupt(now: now)
        }
    }

    /// Gives up the pair's io_uring (closing it settles whatever it still held): its queues
    /// read and write one frame per syscall from now on.
    func dropTapRing(pair: Int) {
        queues[2 * pair].tapRing = nil
        queues[2 * pair + 1].tapRing = nil
    }

    /// Marks in the migration's dirty log the pages of the first `bytes` bytes that a receive
    /// wrote through the iovecs from `first` on (at most `count` of them): the frame with its
    /// virtio-net header and num_buffers, and nothing else.
    func logReceiveWrite(_ log: DirtyLog, _ queue: QueueState, _ ring: SplitQueue, from first: Int, count: Int, bytes: Int) {
        var remaining = bytes
        var index = first
        let end = min(first + count, queue.vectors.count)
        while remaining > 0 && index < end {
            // SAFETY: index < vectors.count; each iovec was built from a region of `ring.memory`.
            let vector = queue.vectors.vectors[index]
            let length = min(remaining, vector.iov_len)
            if let base = vector.iov_base, !log.mark(host: base, length: length, in: ring.memory) {
                noteUnloggedWrite(queue)
            }
            remaining -= length
            index += 1
        }
    }

    func noteUnloggedWrite(_ queue: QueueState) {
        queue.unloggedWrites &+= 1
        let count = queue.unloggedWrites
        if count & (count - 1) == 0 {
            logger.error("queue \(queue.index): wrote guest memory beyond the dirty log (\(count) so far): the migration may copy stale pages")
        }
    }

    // MARK: - Port security

    /// Copies the chain's virtio-net header and the frame's first bytes into the slot's copy,
    /// checks the copy, and makes the chain's iovecs send the copy in their place: what was
    /// checked is what the TAP gets, whatever the guest writes meanwhile.
    @inline(__always)
    private func checkTransmit(_ queue: QueueState, _ filter: PortFilter, _ firstVector: Int, frameBytes: Int, slot: Int) -> TransmitCheck {
        let vectors = queue.vectors
        let copy = queue.headerCopies + slot * headerCopyStride
        let wanted = headerSize + min(frameBytes, PortFilter.inspectedBytes)
        // SAFETY: slot < transmitBatchLimit and wanted <= headerCopyStride, so the copy stays
        // inside the slot; the chain holds headerSize + frameBytes >= wanted bytes.
        let copied = vectors.read(into: UnsafeMutableRawBufferPointer(start: copy, count: wanted), startingAt: firstVector)
        if let violation = filter.checkTransmit(UnsafeRawBufferPointer(start: copy + headerSize, count: copied - headerSize),
                                                frameLength: frameBytes) {
            return .refused(violation)
        }
        return vectors.replacePrefix(from: firstVector, with: copy, length: copied) ? .pass : .noRoom
    }

    enum TransmitCheck {
        case pass
        case refused(PortViolation)
        /// The chain filled the iovec buffer, leaving no entry for the copy.
        case noRoom
    }

    /// Whether port security keeps a received frame (in the chain from `first`) from the guest.
    @inline(__always)
    private func refusesReceive(_ filter: PortFilter, _ vectors: IOVectorBuffer, from first: Int, frameBytes: Int) -> Bool {
        let wanted = headerSize + min(frameBytes, EthernetHeader.addressLength)
        return withUnsafeTemporaryAllocation(byteCount: NetHeader.largestSize + EthernetHeader.addressLength, alignment: 8) { buffer in
            // SAFETY: wanted <= the buffer's size; the frame sits after the virtio-net header.
            let copied = vectors.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<wanted]), startingAt: first)
            return filter.checkReceive(UnsafeRawBufferPointer(rebasing: buffer[headerSize..<max(headerSize, copied)])) != nil
        }
    }

    func notePortViolation(_ queue: QueueState, _ violation: PortViolation) {
        queue.stats.drop(.portSecurity(violation))
        let count = queue.stats.drops(.portSecurity(violation))
        if count & (count - 1) == 0 {
            logger.warning("queue \(queue.index): port security dropped a frame \(queue.isReceive ? "for" : "from") the guest: \(violation.label) (\(count) so far)")
        }
    }

    // MARK: - Accounting and rate-limited logging

    @inline(__always)
    func noteThrottled(_ queue: QueueState, now: UInt64) {
        if queue.throttledSince == 0 {
            queue.throttledSince = now
            queue.stats.throttledEvents &+= 1
        }
    }

    @inline(__always)
    func endThrottleIfNeeded(_ queue: QueueState, now: UInt64, throttled outcome: ServiceOutcome) {
        if case .throttled = outcome { return }
        if queue.throttledSince != 0 {
            queue.stats.throttledNanoseconds &+= now &- queue.throttledSince
            queue.throttledSince = 0
        }
    }

    func noteBadChain(_ queue: QueueState, _ fault: ChainFault) {
        queue.stats.drop(.badChain)
        let count = queue.stats.drops(.badChain)
        // Log the first and then every power of two, so a flood cannot flood the log.
        if count & (count - 1) == 0 {
            logger.warning("queue \(queue.index): refused a descriptor chain: \(fault) (\(count) so far)")
        }
    }

    func noteBadHeader(_ queue: QueueState, _ problem: NetHeader.Problem) {
        let count = queue.stats.drops(.badHeader)
        if count & (count - 1) == 0 {
            logger.warning("queue \(queue.index): dropped a frame with an inconsistent virtio-net header: \(problem.rawValue) (\(count) so far)")
        }
    }

    func noteTapError(_ queue: QueueState, _ code: Int32) {
        let count = queue.stats.drops(.tapError)
        if count & (count - 1) == 0 {
            logger.warning("queue \(queue.index): TAP \(queue.isReceive ? "read" : "write") failed: \(String(cString: strerror(code))) (\(count) so far)")
        }
    }
}
