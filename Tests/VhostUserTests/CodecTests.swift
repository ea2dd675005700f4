import Testing
import SystemCalls
import VhostUser

func decode(_ request: VhostUserRequest, _ payload: [UInt8], fds: [Descriptor] = [], flags: UInt32 = HeaderFlags.version) throws(ProtocolError) -> VhostUserMessage {
    let header = MessageHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count))
    try header.validateAsRequest()
    do {
        return try payload.withUnsafeBytes { buffer in try MessageDecoder.decode(header: header, payload: buffer, descriptors: fds) }
    } catch { throw error as! ProtocolError }
}

func eventfd() throws -> Descriptor { try EventFD.make() }

@Suite struct MessageCodec {
    @Test func headerRoundTrip() {
        let bytes = MessageEncoder.encode(request: 5, flags: HeaderFlags.version | HeaderFlags.needReply, payload: [1, 2, 3])
        #expect(bytes.count == 15)
        let header = bytes.withUnsafeBytes { MessageHeader(bytes: $0) }
        #expect(header == MessageHeader(request: 5, flags: 0x9, size: 3))
        #expect(header.needsReply)
    }

    @Test func headerChecks() {
        #expect(throws: ProtocolError.badVersion(flags: 2)) { try MessageHeader(request: 1, flags: 2, size: 0).validateAsRequest() }
        #expect(throws: ProtocolError.unexpectedReply(request: 1)) { try MessageHeader(request: 1, flags: 5, size: 0).validateAsRequest() }
        #expect(throws: ProtocolError.payloadTooLarge(request: 1, size: UInt32.max)) {
            try MessageHeader(request: 1, flags: 1, size: UInt32.max).validateAsRequest()
        }
    }

    @Test func featuresAndVringState() throws {
        guard case .setFeatures(let f) = try decode(.setFeatures, MessageEncoder.u64(0x1_0000_0001)) else { Issue.record("wrong case"); return }
        #expect(f == 0x1_0000_0001)
        guard case .setVringNum(let index, let num) = try decode(.setVringNum, MessageEncoder.vringState(index: 1, num: 256)) else {
            Issue.record("wrong case"); return
        }
        #expect(index == 1 && num == 256)
        #expect(throws: ProtocolError.wrongPayloadSize(request: "SET_FEATURES", size: 4, expected: "8")) {
            try decode(.setFeatures, [0, 0, 0, 0])
        }
    }

    @Test func vringAddress() throws {
        let a = VringAddress(index: 1, descriptors: 0x1000, used: 0x3000, avail: 0x2000)
        guard case .setVringAddr(let decoded) = try decode(.setVringAddr, MessageEncoder.vringAddress(a)) else { Issue.record("wrong case"); return }
        #expect(decoded == a)
    }

    @Test func memTableNeedsOneFdPerRegion() throws {
        let regions = [RegionDescription(guestPhysicalAddress: 0, size: 1 << 20, userspaceAddress: 0x7f00_0000_0000, mmapOffset: 0)]
        let payload = MessageEncoder.memTable(regions)
        guard case .setMemTable(let decoded, let fds) = try decode(.setMemTable, payload, fds: [try eventfd()]) else {
            Issue.record("wrong case"); return
        }
        #expect(decoded == regions)
        #expect(fds.count == 1)
        #expect(throws: ProtocolError.wrongDescriptorCount(request: "SET_MEM_TABLE", got: 0, expected: 1)) {
            try decode(.setMemTable, payload)
        }
        var tooMany = MessageEncoder.memTable(regions)
        tooMany[0] = 9
        #expect(throws: ProtocolError.tooManyRegions(9)) { try decode(.setMemTable, tooMany) }
        // QEMU's fixed 8-slot layout is accepted too.
        let padded = payload + [UInt8](repeating: 0, count: 32 * 7)
        guard case .setMemTable = try decode(.setMemTable, padded, fds: [try eventfd()]) else { Issue.record("wrong case"); return }
    }

    @Test func kickWithAndWithoutDescriptor() throws {
        guard case .setVringKick(let index, let fd) = try decode(.setVringKick, MessageEncoder.u64(1), fds: [try eventfd()]) else {
            Issue.record("wrong case"); return
        }
        #expect(index == 1 && fd != nil)
        guard case .setVringCall(let i2, let none) = try decode(.setVringCall, MessageEncoder.u64(0x100 | 3)) else {
            Issue.record("wrong case"); return
        }
        #expect(i2 == 3 && none == nil)
        #expect(throws: ProtocolError.wrongDescriptorCount(request: "SET_VRING_KICK", got: 0, expected: 1)) {
            try decode(.setVringKick, MessageEncoder.u64(0))
        }
        #expect(throws: ProtocolError.wrongDescriptorCount(request: "SET_VRING_CALL", got: 1, expected: 0)) {
            try decode(.setVringCall, MessageEncoder.u64(0x100), fds: [try eventfd()])
        }
    }

    @Test func strayDescriptorsAreRefusedAndClosed() throws {
        let stray = try eventfd()
        let raw = stray.raw
        var message: VhostUserMessage? = nil
        do { message = try decode(.getFeatures, [], fds: [stray]) } catch {
            #expect(error == .wrongDescriptorCount(request: "GET_FEATURES", got: 1, expected: 0))
        }
        #expect(message == nil)
        _ = raw
    }

    @Test func configRangeIsChecked() throws {
        #expect(throws: ProtocolError.badConfigRange(offset: 250, size: 10)) {
            try decode(.getConfig, MessageEncoder.config(offset: 250, size: 10, flags: 0, data: [UInt8](repeating: 0, count: 10)))
        }
        guard case .getConfig(let offset, let size, _) = try decode(.getConfig, MessageEncoder.config(offset: 0, size: 6, flags: 0, data: [0, 0, 0, 0, 0, 0])) else {
            Issue.record("wrong case"); return
        }
        #expect(offset == 0 && size == 6)
    }

    @Test func unknownAndUnsupportedRequests() throws {
        let header = MessageHeader(request: 999, flags: 1, size: 0)
        #expect(throws: ProtocolError.unknownRequest(999)) {
            try MessageDecoder.decode(header: header, payload: UnsafeRawBufferPointer(start: nil, count: 0), descriptors: [])
        }
        guard case .unsupported(let r) = try decode(.postcopyAdvise, MessageEncoder.u64(0)) else { Issue.record("wrong case"); return }
        #expect(r == .postcopyAdvise)
    }

    @Test func setLogBaseCarriesSizeOffsetAndItsMemfd() throws {
        guard case .setLogBase(let size, let offset, _) = try decode(.setLogBase, MessageEncoder.logBase(size: 2048, offset: 4096),
                                                                   fds: [try eventfd()]) else {
            Issue.record("wrong case"); return
        }
        #expect(size == 2048 && offset == 4096)
        #expect(throws: ProtocolError.self, "the memfd is required") { try decode(.setLogBase, MessageEncoder.logBase(size: 2048, offset: 0)) }
        #expect(throws: ProtocolError.self, "the payload is two u64s") { try decode(.setLogBase, MessageEncoder.u64(2048), fds: [try eventfd()]) }
    }

    @Test func addMemRegCarriesOneRegion() throws {
        let region = RegionDescription(guestPhysicalAddress: 0x1000_0000, size: 4096, userspaceAddress: 0x7000, mmapOffset: 0)
        guard case .addMemReg(let decoded, _) = try decode(.addMemReg, MessageEncoder.singleRegion(region), fds: [try eventfd()]) else {
            Issue.record("wrong case"); return
        }
        #expect(decoded == region)
        guard case .remMemReg(let removed) = try decode(.remMemReg, MessageEncoder.singleRegion(region)) else { Issue.record("wrong case"); return }
        #expect(removed == region)
    }
}
