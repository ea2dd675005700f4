import Testing
import GuestMemory

final class Buffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(_ size: Int) { pointer = .allocate(byteCount: size, alignment: 64) }
    deinit { pointer.deallocate() }
}

@Suite struct GuestMemoryMapTests {
    func twoRegions() throws -> (GuestMemoryMap, Buffer, Buffer) {
        let low = Buffer(4096), high = Buffer(4096)
        let map = try GuestMemoryMap(regions: [
            MemoryRegion(guestPhysicalAddress: 0x1000, size: 4096, userspaceAddress: 0x7000_0000, host: high.pointer, owner: high),
            MemoryRegion(guestPhysicalAddress: 0, size: 4096, userspaceAddress: 0x5000_0000, host: low.pointer, owner: low),
        ])
        return (map, low, high)
    }

    @Test func translatesInsideOneRegion() throws {
        let (map, low, high) = try twoRegions()
        #expect(map.hostPointer(guestPhysical: 0x10, length: 16) == low.pointer + 0x10)
        #expect(map.hostPointer(guestPhysical: 0x1000, length: 4096) == high.pointer)
        #expect(map.hostPointer(userspace: 0x7000_0010, length: 8) == high.pointer + 0x10)
    }

    @Test func refusesRangesThatLeaveARegion() throws {
        let (map, _, _) = try twoRegions()
        #expect(map.hostPointer(guestPhysical: 0xff0, length: 32) == nil, "crosses into another region")
        #expect(map.hostPointer(guestPhysical: 0x2000, length: 1) == nil, "past the end")
        #expect(map.hostPointer(guestPhysical: 0x1ff8, length: 16) == nil, "straddles the end")
        #expect(map.hostPointer(userspace: 0x6000_0000, length: 1) == nil)
        #expect(map.hostPointer(guestPhysical: UInt64.max, length: 2) == nil)
    }

    @Test func splitsARangeAcrossRegionBoundaries() throws {
        let (map, low, high) = try twoRegions()
        var pieces = [(UnsafeMutableRawPointer, Int)]()
        let ok = map.forEachHostSegment(guestPhysical: 0xff0, length: 32) { pieces.append(($0, $1)); return true }
        #expect(ok)
        #expect(pieces.count == 2)
        #expect(pieces[0].0 == low.pointer + 0xff0 && pieces[0].1 == 16)
        #expect(pieces[1].0 == high.pointer && pieces[1].1 == 16)
        #expect(!map.forEachHostSegment(guestPhysical: 0x1ff0, length: 32) { _, _ in true }, "runs off the end")
        #expect(!map.forEachHostSegment(guestPhysical: UInt64.max - 1, length: 8) { _, _ in true }, "wraps")
    }

    @Test func readAndWriteAcrossRegions() throws {
        let (map, _, _) = try twoRegions()
        let data: [UInt8] = Array(0..<32)
        #expect(data.withUnsafeBytes { map.write(guestPhysical: 0xff0, from: $0) })
        var back = [UInt8](repeating: 0, count: 32)
        #expect(back.withUnsafeMutableBytes { map.read(guestPhysical: 0xff0, into: $0) })
        #expect(back == data)
    }

    @Test func refusesBadTables() throws {
        let b = Buffer(8192)
        #expect(throws: GuestMemoryError.emptyRegion(index: 0)) {
            try GuestMemoryMap(regions: [MemoryRegion(guestPhysicalAddress: 0, size: 0, userspaceAddress: 0, host: b.pointer, owner: b)])
        }
        #expect(throws: GuestMemoryError.addressOverflow(index: 0)) {
            try GuestMemoryMap(regions: [MemoryRegion(guestPhysicalAddress: UInt64.max - 10, size: 4096, userspaceAddress: 0, host: b.pointer, owner: b)])
        }
        #expect(throws: GuestMemoryError.overlappingGuestRanges(0, 0x800)) {
            try GuestMemoryMap(regions: [
                MemoryRegion(guestPhysicalAddress: 0, size: 4096, userspaceAddress: 0, host: b.pointer, owner: b),
                MemoryRegion(guestPhysicalAddress: 0x800, size: 4096, userspaceAddress: 0x10000, host: b.pointer, owner: b),
            ])
        }
        let many = (0..<65).map { i in
            MemoryRegion(guestPhysicalAddress: UInt64(i) * 4096, size: 4096, userspaceAddress: UInt64(i) * 4096, host: b.pointer, owner: b)
        }
        #expect(throws: GuestMemoryError.tooManyRegions(count: 65, limit: 64)) { try GuestMemoryMap(regions: many) }
    }
}
