// libFuzzer target: a vhost-user message stream from an untrusted frontend.
//
// The input is a sequence of records, each one message as a frontend would send it:
//
//   u8   control   bits 0-3: how many descriptors travel with the message (0-15; more than 8
//                  does not fit the backend's SCM_RIGHTS buffer and must end the connection)
//                  bit 4: the frontend writes the header in two pieces, the first of
//                  1 + bits 5-7 bytes (exercises the short-header path of the real reader)
//   ...  wire      a 12-byte header and then exactly header.size payload bytes (fewer at the
//                  end of the input: a frontend that hangs up mid-message)
//
// Each input is decoded twice with tapwire's real code, and the two must agree message by
// message:
//  1. directly: MessageHeader + validateAsRequest() + MessageDecoder.decode with a payload
//     buffer of exactly header.size bytes (so ASan sees any over-read) and real eventfds as the
//     descriptors; every decoded field is checked against the raw bytes;
//  2. over a real unix socketpair through VhostUserConnection.receive() (recvmsg with
//     SCM_RIGHTS, short reads, truncation), the way the daemon reads it.
// Descriptor hygiene: every descriptor handed to the decoder must be closed once the message is
// dropped, and the eventfds and sockets in /proc/self/fd are counted every 128 inputs: any growth
// is a leak and aborts (with the fd table listed).
import Glibc
import CTapwire
import SystemCalls
import VhostUser
import GuestMemory
import FuzzSupport

private let maxMessages = 64

private enum Outcome: Equatable, CustomStringConvertible {
    case message(String)
    case refused(String)
    case closed
    case hangUp(String)

    var description: String {
        switch self {
        case .message(let s): return "message \(s)"
        case .refused(let s): return "refused \(s)"
        case .closed: return "closed"
        case .hangUp(let s): return "hang-up \(s)"
        }
    }
}

@inline(never)
private func fail(_ message: String) -> Never {
    fz_fail(message)
}

private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fail(message()) }
}

/// A protocol error without the details that legitimately differ between the two paths (how
/// many header bytes the first recvmsg happened to return).
private func normalized(_ error: ProtocolError) -> String {
    if case .truncatedHeader = error { return "truncatedHeader" }
    return "\(error)"
}

private func u64(_ p: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 { p.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
private func u32(_ p: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 { p.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }

private func region(_ p: UnsafeRawBufferPointer, _ offset: Int) -> RegionDescription {
    RegionDescription(guestPhysicalAddress: u64(p, offset), size: u64(p, offset + 8), userspaceAddress: u64(p, offset + 16),
                      mmapOffset: u64(p, offset + 24))
}

/// A description of a decoded message that both paths can compare (descriptors by presence, not
/// number).
private func summary(_ message: VhostUserMessage) -> String {
    switch message {
    case .getFeatures: return "GET_FEATURES"
    case .setFeatures(let v): return "SET_FEATURES \(v)"
    case .setOwner: return "SET_OWNER"
    case .resetOwner: return "RESET_OWNER"
    case .resetDevice: return "RESET_DEVICE"
    case .setMemTable(let regions, let fds): return "SET_MEM_TABLE \(regions) fds=\(fds.count)"
    case .getMaxMemSlots: return "GET_MAX_MEM_SLOTS"
    case .addMemReg(let r, _): return "ADD_MEM_REG \(r)"
    case .remMemReg(let r): return "REM_MEM_REG \(r)"
    case .setVringNum(let i, let n): return "SET_VRING_NUM \(i) \(n)"
    case .setVringAddr(let a): return "SET_VRING_ADDR \(a)"
    case .setVringBase(let i, let n): return "SET_VRING_BASE \(i) \(n)"
    case .getVringBase(let i): return "GET_VRING_BASE \(i)"
    case .setVringKick(let i, let fd): return "SET_VRING_KICK \(i) \(fd == nil ? "nofd" : "fd")"
    case .setVringCall(let i, let fd): return "SET_VRING_CALL \(i) \(fd == nil ? "nofd" : "fd")"
    case .setVringErr(let i, let fd): return "SET_VRING_ERR \(i) \(fd == nil ? "nofd" : "fd")"
    case .getProtocolFeatures: return "GET_PROTOCOL_FEATURES"
    case .setProtocolFeatures(let v): return "SET_PROTOCOL_FEATURES \(v)"
    case .getQueueNum: return "GET_QUEUE_NUM"
    case .setVringEnable(let i, let e): return "SET_VRING_ENABLE \(i) \(e)"
    case .sendRARP(let mac): return "SEND_RARP \(mac)"
    case .netSetMTU(let v): return "NET_SET_MTU \(v)"
    case .getConfig(let o, let s, let f): return "GET_CONFIG \(o) \(s) \(f)"
    case .setConfig(let o, let f, let d): return "SET_CONFIG \(o) \(f) \(d)"
    case .setBackendReqFD: return "SET_BACKEND_REQ_FD"
    case .setLogBase(let size, let offset, _): return "SET_LOG_BASE \(size) \(offset)"
    case .setLogFD: return "SET_LOG_FD"
    case .unsupported(let r): return "unsupported \(r.name)"
    }
}

/// The regions of SET_MEM_TABLE / ADD_MEM_REG as the daemon turns them into a GuestMemoryMap
/// (with made-up host addresses: nothing is dereferenced). The map must accept exactly the tables
/// without empty, wrapping or overlapping regions, and translate like a brute-force search.
private func checkMemoryTable(_ described: [RegionDescription]) {
    let regions = described.enumerated().map { i, d in
        MemoryRegion(guestPhysicalAddress: d.guestPhysicalAddress, size: d.size, userspaceAddress: d.userspaceAddress,
                     host: UnsafeMutableRawPointer(bitPattern: UInt(0x10_0000_0000) * UInt(i + 1))!, owner: nil)
    }
    func overlaps(_ a: (UInt64, UInt64), _ b: (UInt64, UInt64)) -> Bool { a.0 < b.0 &+ b.1 && b.0 < a.0 &+ a.1 }
    var valid = regions.count <= GuestMemoryMap.maxRegions
    for (i, r) in regions.enumerated() {
        if r.size == 0 || r.guestPhysicalAddress.addingReportingOverflow(r.size).overflow
            || r.userspaceAddress.addingReportingOverflow(r.size).overflow { valid = false }
        for q in regions[..<i] where valid {
            if overlaps((r.guestPhysicalAddress, r.size), (q.guestPhysicalAddress, q.size))
                || overlaps((r.userspaceAddress, r.size), (q.userspaceAddress, q.size)) { valid = false }
        }
    }
    let map: GuestMemoryMap
    do {
        map = try GuestMemoryMap(regions: regions)
    } catch {
        check(!valid, "GuestMemoryMap refused a valid table: \(error) \(described)")
        return
    }
    check(valid, "GuestMemoryMap accepted an invalid table \(described)")
    for (i, r) in regions.enumerated() {
        for (address, length) in [(r.guestPhysicalAddress, UInt64(1)), (r.guestPhysicalAddress &+ r.size &- 1, 1),
                                  (r.guestPhysicalAddress &+ r.size, 1), (r.guestPhysicalAddress &- 1, 2),
                                  (r.guestPhysicalAddress, r.size), (r.guestPhysicalAddress, r.size &+ 1)] {
            // Offsets past Int.max cannot come from a real mapping (mmap bounds them).
            guard address &- r.guestPhysicalAddress <= UInt64(Int.max) || !(address >= r.guestPhysicalAddress) else { continue }
            let owner = regions.firstIndex { address >= $0.guestPhysicalAddress && address - $0.guestPhysicalAddress < $0.size }
            var expected: UnsafeMutableRawPointer?
            if let o = owner {
                let region = regions[o]
                let offset = address - region.guestPhysicalAddress
                if offset <= UInt64(Int.max), length <= region.size - offset { expected = region.host + Int(offset) }
                else if offset > UInt64(Int.max) { continue }
            }
            check(map.hostPointer(guestPhysical: address, length: length) == expected,
                  "hostPointer(guestPhysical: \(address), length: \(length)) disagrees (region \(i) of \(described))")
        }
    }
}

/// Checks a message the decoder accepted against the raw header, payload and descriptors.
private func verify(_ message: VhostUserMessage, header: MessageHeader, payload p: UnsafeRawBufferPointer,
                    descriptors: [Descriptor]) {
    let size = Int(header.size)
    check(p.count == size, "payload buffer size")
    check(VhostUserRequest(rawValue: header.request) != nil, "unknown request \(header.request) decoded")
    let fds = descriptors.count
    let name = VhostUserRequest(rawValue: header.request)!.name
    func sameFD(_ d: Descriptor?) {
        guard let d else { return }
        check(descriptors.contains { $0 === d }, "\(name): message carries a descriptor it was not given")
        check(d.isOpen, "\(name): message carries a closed descriptor")
    }
    switch message {
    case .getFeatures, .getProtocolFeatures, .getQueueNum, .getMaxMemSlots, .setOwner, .resetOwner, .resetDevice:
        check(size == 0 || size == 8, "\(name) accepted with \(size) payload bytes")
        check(fds == 0, "\(name) accepted with \(fds) descriptors")
    case .setFeatures(let v), .setProtocolFeatures(let v), .netSetMTU(let v):
        check(size == 8 && v == u64(p, 0), "\(name) value")
        check(fds == 0, "\(name) accepted with \(fds) descriptors")
    case .setMemTable(let regions, let carried):
        let count = Int(u32(p, 0))
        check(size >= 8 && count <= VhostUserLimits.maxMemTableRegions, "SET_MEM_TABLE with \(count) regions accepted")
        check(size == 8 + 32 * count || size == 8 + 32 * VhostUserLimits.maxMemTableRegions, "SET_MEM_TABLE size \(size) for \(count)")
        check(regions.count == count && carried.count == count && fds == count, "SET_MEM_TABLE counts")
        for i in 0..<count {
            check(regions[i] == region(p, 8 + 32 * i), "SET_MEM_TABLE region \(i) differs from the payload")
            check(carried[i] === descriptors[i], "SET_MEM_TABLE descriptor \(i) is not the one passed at \(i)")
            sameFD(carried[i])
        }
        checkMemoryTable(regions)
    case .addMemReg(let r, let d):
        check(size == 40 && r == region(p, 8), "ADD_MEM_REG region")
        check(fds == 1 && d === descriptors[0], "ADD_MEM_REG descriptor")
        sameFD(d)
        checkMemoryTable([r])
    case .remMemReg(let r):
        check(size == 40 && r == region(p, 8), "REM_MEM_REG region")
        check(fds <= 1, "REM_MEM_REG accepted with \(fds) descriptors")
    case .setVringNum(let i, let n), .setVringBase(let i, let n):
        check(size == 8 && i == u32(p, 0) && n == u32(p, 4), "\(name) state")
        check(fds == 0, "\(name) accepted with \(fds) descriptors")
    case .getVringBase(let i):
        check(size == 8 && i == u32(p, 0), "GET_VRING_BASE state")
        check(fds == 0, "GET_VRING_BASE accepted with \(fds) descriptors")
    case .setVringEnable(let i, let e):
        check(size == 8 && i == u32(p, 0) && e == (u32(p, 4) != 0), "SET_VRING_ENABLE state")
        check(fds == 0, "SET_VRING_ENABLE accepted with \(fds) descriptors")
    case .setVringAddr(let a):
        check(size == 40, "SET_VRING_ADDR size")
        check(a == VringAddress(index: u32(p, 0), flags: u32(p, 4), descriptors: u64(p, 8), used: u64(p, 16),
                                avail: u64(p, 24), log: u64(p, 32)), "SET_VRING_ADDR fields")
        check(fds == 0, "SET_VRING_ADDR accepted with \(fds) descriptors")
    case .setVringKick(let i, let d), .setVringCall(let i, let d), .setVringErr(let i, let d):
        check(size == 8, "\(name) size")
        let v = u64(p, 0)
        check(UInt64(i) == v & 0xff && i < 256, "\(name) index")
        if v & 0x100 != 0 {
            check(d == nil && fds == 0, "\(name) with the no-fd bit")
        } else {
            check(d != nil && fds == 1 && d === descriptors[0], "\(name) descriptor")
        }
        sameFD(d)
    case .sendRARP(let mac):
        check(size == 8 && mac.count == 6 && mac == Array(p.prefix(6)), "SEND_RARP mac")
        check(fds == 0, "SEND_RARP accepted with \(fds) descriptors")
    case .getConfig(let o, let s, let f):
        check(size == 12 + Int(s) && o == u32(p, 0) && s == u32(p, 4) && f == u32(p, 8), "GET_CONFIG fields")
        check(Int(o) + Int(s) <= 256, "GET_CONFIG range \(o)+\(s) accepted")
        check(fds == 0, "GET_CONFIG accepted with \(fds) descriptors")
    case .setConfig(let o, let f, let d):
        check(size == 12 + d.count && o == u32(p, 0) && UInt32(d.count) == u32(p, 4) && f == u32(p, 8), "SET_CONFIG fields")
        check(Int(o) + d.count <= 256, "SET_CONFIG range \(o)+\(d.count) accepted")
        check(d == Array(p[12...]), "SET_CONFIG data")
        check(fds == 0, "SET_CONFIG accepted with \(fds) descriptors")
    case .setBackendReqFD(let d):
        check(fds == 1 && d === descriptors[0], "SET_BACKEND_REQ_FD descriptor")
        sameFD(d)
    case .setLogBase(let logSize, let offset, let d):
        check(size == 16 && logSize == u64(p, 0) && offset == u64(p, 8), "SET_LOG_BASE fields")
        check(fds == 1 && d === descriptors[0], "SET_LOG_BASE descriptor")
        sameFD(d)
    case .setLogFD(let d):
        check((size == 0 || size == 8) && fds == 1 && d === descriptors[0], "SET_LOG_FD payload and descriptor")
        sameFD(d)
    case .unsupported(let r):
        check(r.rawValue == header.request, "unsupported request number")
    }
}

/// Splits the input into records (control byte, wire bytes) the way both paths must see them.
private struct Record {
    var descriptorCount: Int
    var splitAt: Int?
    var wire: Range<Int>
}

private func records(_ data: UnsafeRawBufferPointer) -> [Record] {
    var result: [Record] = []
    var pos = 0
    while result.count < maxMessages, pos < data.count {
        let control = data[pos]
        pos += 1
        if pos >= data.count { break } // a control byte with nothing after it sends nothing
        let start = pos
        var end = min(data.count, start + 12)
        if end - start == 12 {
            let size = Int(data.loadUnaligned(fromByteOffset: start + 8, as: UInt32.self))
            // Past a header that fails validation nothing more is read; keep the rest as payload.
            end = size <= Int(VhostUserLimits.maxPayload) ? min(data.count, end + size) : data.count
        }
        let split = control & 0x10 != 0 ? 1 + Int(control >> 5) : nil
        result.append(Record(descriptorCount: Int(control & 0x0f), splitAt: split, wire: start..<end))
        pos = end
    }
    return result
}

private func makeEventFDs(_ count: Int) -> [Descriptor] {
    (0..<count).map { _ in
        let fd = fz_eventfd()
        check(fd >= 0, "eventfd failed: errno \(errno)")
        return Descriptor(taking: fd)
    }
}

/// Path 1: tapwire's header validation and decoder called directly.
private func decodeDirectly(_ data: UnsafeRawBufferPointer, _ records: [Record]) -> [Outcome] {
    var outcomes: [Outcome] = []
    for record in records {
        let wire = UnsafeRawBufferPointer(rebasing: data[record.wire])
        if record.descriptorCount > Int(TW_MAX_PASSED_FDS) {
            outcomes.append(.hangUp(normalized(.tooManyDescriptors)))
            return outcomes
        }
        guard wire.count >= VhostUserLimits.headerSize else {
            outcomes.append(.hangUp("truncatedHeader"))
            return outcomes
        }
        let header = MessageHeader(bytes: wire)
        do {
            try header.validateAsRequest()
        } catch {
            outcomes.append(.hangUp(normalized(error)))
            return outcomes
        }
        check(header.size <= VhostUserLimits.maxPayload, "validateAsRequest let \(header.size) payload bytes through")
        let size = Int(header.size)
        guard wire.count - VhostUserLimits.headerSize == size else {
            outcomes.append(.hangUp(normalized(.peerClosedMidMessage)))
            return outcomes
        }
        // Exactly `size` bytes on the heap, so ASan flags any read past the payload.
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
        defer { payload.deallocate() }
        if size > 0 { payload.copyMemory(from: UnsafeRawBufferPointer(rebasing: wire[12...])) }
        var raws: [Int32] = []
        do {
            let descriptors = makeEventFDs(record.descriptorCount)
            raws = descriptors.map(\.raw)
            do {
                let message = try MessageDecoder.decode(header: header, payload: UnsafeRawBufferPointer(payload),
                                                        descriptors: descriptors)
                verify(message, header: header, payload: UnsafeRawBufferPointer(payload), descriptors: descriptors)
                outcomes.append(.message(summary(message)))
            } catch {
                outcomes.append(.refused(normalized(error)))
            }
        }
        // The message and the array are gone: every descriptor must be closed now.
        for fd in raws where fz_fd_is_open(fd) != 0 {
            fail("descriptor \(fd) passed with request \(header.request) is still open after the message was dropped")
        }
    }
    outcomes.append(.closed)
    return outcomes
}

/// Path 2: the same bytes through a real socketpair and VhostUserConnection.receive().
private func receiveOverSocket(_ data: UnsafeRawBufferPointer, _ records: [Record]) -> [Outcome] {
    let (writer, reader): (Descriptor, Descriptor)
    do { (writer, reader) = try UnixSocket.pair() } catch { fail("socketpair: \(error)") }
    _ = fz_prepare_writer(writer.raw, 4 << 20)
    check(fz_prepare_reader(reader.raw, 5000) == 0, "SO_RCVTIMEO")
    for record in records {
        let wire = UnsafeRawBufferPointer(rebasing: data[record.wire])
        let descriptors = makeEventFDs(record.descriptorCount)
        let raws = descriptors.map(\.raw)
        var pieces: [UnsafeRawBufferPointer] = [wire]
        if let split = record.splitAt, split < wire.count {
            pieces = [UnsafeRawBufferPointer(rebasing: wire[..<split]), UnsafeRawBufferPointer(rebasing: wire[split...])]
        }
        for (n, piece) in pieces.enumerated() {
            let sent = raws.withUnsafeBufferPointer { fds in
                fz_send_fds(writer.raw, piece.baseAddress, piece.count, n == 0 ? fds.baseAddress : nil, n == 0 ? Int32(fds.count) : 0)
            }
            check(sent == piece.count, "harness: sendmsg sent \(sent) of \(piece.count) bytes (errno \(errno))")
        }
        // Our copies close here, not before the send; the kernel holds the in-flight ones.
        withExtendedLifetime(descriptors) {}
    }
    check(fz_shutdown_write(writer.raw) == 0, "shutdown")
    let connection = VhostUserConnection(socket: reader)
    var outcomes: [Outcome] = []
    for _ in 0...(records.count + 1) {
        do {
            switch try connection.receive() {
            case .message(_, let message): outcomes.append(.message(summary(message)))
            case .refused(_, let error): outcomes.append(.refused(normalized(error)))
            case .closed:
                outcomes.append(.closed)
                return outcomes
            }
        } catch {
            switch error {
            case .protocolViolation(let e): outcomes.append(.hangUp(normalized(e)))
            case .system(let e): fail("VhostUserConnection.receive: unexpected system error \(e)")
            }
            return outcomes
        }
    }
    fail("VhostUserConnection.receive returned more messages than were sent (\(outcomes))")
}

nonisolated(unsafe) private var iterations = 0
/// FUZZ_TRACE=1: print each decoded message (to check that seeds reach what they mean to).
private let trace = getenv("FUZZ_TRACE") != nil
nonisolated(unsafe) private var baselineFDs = -1

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMessage(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let data = UnsafeRawBufferPointer(start: count > 0 ? bytes : nil, count: count)
    let split = records(data)
    let direct = decodeDirectly(data, split)
    let socket = receiveOverSocket(data, split)
    if trace {
        for (i, o) in direct.enumerated() { print("#\(i) \(o)") }
    }
    if direct != socket {
        var lines = "the direct decode and VhostUserConnection disagree:\n"
        for i in 0..<max(direct.count, socket.count) {
            let a = i < direct.count ? direct[i].description : "-"
            let b = i < socket.count ? socket[i].description : "-"
            lines += "  #\(i) \(a == b ? "  " : "!=") direct: \(a)\n       socket: \(b)\n"
        }
        fail(lines)
    }
    iterations += 1
    if iterations == 16 || iterations % 128 == 0 {
        let open = Int(fz_count_open_fds())
        if baselineFDs < 0 {
            baselineFDs = open
        } else if open > baselineFDs {
            fz_dump_fds()
            fail("descriptor leak: \(open) open eventfds/sockets, \(baselineFDs) after warm-up (iteration \(iterations))")
        }
    }
    return 0
}
