import Testing
import PortSecurity

@Suite("IPNetwork: --allowed-ips prefixes")
struct IPNetworkTests {
    @Test func hostsNetworksAndFamilies() throws {
        #expect(try IPNetwork(parsing: "10.0.0.5") == .v4(address: 0x0a00_0005, prefixLength: 32))
        #expect(try IPNetwork(parsing: "10.0.0.0/24").contains(v4: 0x0a00_00fe))
        #expect(try !IPNetwork(parsing: "10.0.0.0/24").contains(v4: 0x0a00_0100))
        let v6 = try IPNetwork(parsing: "2001:db8::/64")
        #expect(v6.contains(v6High: 0x2001_0db8_0000_0000, low: 42))
        #expect(!v6.contains(v6High: 0x2001_0db8_0000_0001, low: 42))
        #expect(try IPNetwork(parsing: "0.0.0.0/0").contains(v4: 0xffff_ffff))
        #expect(try IPNetwork.parseList("10.0.0.5/32, 2001:db8::5").map(\.description) == ["10.0.0.5/32", "2001:db8::5/128"])
    }

    @Test func badPrefixesSayWhatIsWrong() {
        #expect(throws: IPNetwork.ParseError.self) { try IPNetwork(parsing: "10.0.0.300") }
        let tooLong = #expect(throws: IPNetwork.ParseError.self) { try IPNetwork(parsing: "10.0.0.1/33") }
        #expect(tooLong?.description == "'10.0.0.1/33': the prefix length must be 0 to 32, not '33'")
        let hostBits = #expect(throws: IPNetwork.ParseError.self) { try IPNetwork(parsing: "10.0.0.5/24") }
        #expect(hostBits?.description == "'10.0.0.5/24' has bits set beyond its prefix; write the network (10.0.0.0/24) or the host as /32")
    }

    @Test func atMostSoManyPrefixes() throws {
        let most = (0..<PortPolicy.maxAllowedIPs).map { "10.0.\($0).0/24" }
        let filter = PortFilter(PortPolicy(mac: [2, 0, 0, 0, 0, 1], allowedIPs: try IPNetwork.parse(most)))
        #expect(filter.policy.allowedIPs.count == PortPolicy.maxAllowedIPs)
        let tooMany = #expect(throws: IPNetwork.ParseError.self) { try IPNetwork.parseList((most + ["10.1.0.0/16"]).joined(separator: ",")) }
        #expect(tooMany?.description == "33 prefixes; at most 32 (give a shorter prefix that covers several)")
    }
}
