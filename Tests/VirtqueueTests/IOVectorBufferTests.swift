import Testing
import CTapwire
import Virtqueue

/// Moving a frame from one chain's buffers to another's (batched receive does this when a
/// frame lands in a later chain than an empty read).
@Suite struct IOVectorCopy {
    @Test func copiesAcrossDifferentSegmentLayouts() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { memory.deallocate() }
        for i in 0..<4096 { memory.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
        let vectors = IOVectorBuffer(capacity: 16)
        // Source: 100 bytes in segments of 7, 50 and 43; destination: 30 + 200 bytes.
        _ = vectors.append(memory + 0, 7)
        _ = vectors.append(memory + 100, 50)
        _ = vectors.append(memory + 300, 43)
        _ = vectors.append(memory + 1000, 30)
        _ = vectors.append(memory + 2000, 200)
        let expected = (0..<7).map { UInt8($0) } + (100..<150).map { UInt8($0) } + (300..<343).map { UInt8(truncatingIfNeeded: $0) }
        let copied = vectors.copy(100, from: 0, count: 3, to: 3, count: 2)
        #expect(copied == 100)
        var out = [UInt8](repeating: 0, count: 100)
        out.withUnsafeMutableBytes { _ = vectors.read(into: $0, startingAt: 3) }
        #expect(out == expected)
    }

    @Test func stopsWhereTheDestinationEnds() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 16)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 512)
        let vectors = IOVectorBuffer(capacity: 4)
        _ = vectors.append(memory, 200)
        _ = vectors.append(memory + 300, 60)
        #expect(vectors.copy(200, from: 0, count: 1, to: 1, count: 1) == 60, "only what fits")
    }

    @Test func overlappingBuffersAreMovedNotSmeared() {
        // A hostile guest may point two chains at overlapping memory: the copy is a memmove.
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
        defer { memory.deallocate() }
        for i in 0..<64 { memory.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
        let vectors = IOVectorBuffer(capacity: 2)
        _ = vectors.append(memory, 32)
        _ = vectors.append(memory + 8, 32)
        #expect(vectors.copy(32, from: 0, count: 1, to: 1, count: 1) == 32)
        let moved = (0..<32).map { memory.load(fromByteOffset: 8 + $0, as: UInt8.self) }
        #expect(moved == (0..<32).map { UInt8($0) })
    }
}
