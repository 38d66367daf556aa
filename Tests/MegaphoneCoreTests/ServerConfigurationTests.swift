import Testing

@testable import MegaphoneCore

struct ServerConfigurationTests {
    /// README "Reactor threads: the default": one reactor (inline) up to 7 cores, then one per four.
    @Test(arguments: [(1, 1), (2, 1), (3, 1), (4, 1), (7, 1), (8, 2), (16, 4), (64, 16), (0, 1)])
    func defaultThreadsIsOnePerFourCores(cores: Int, threads: Int) {
        #expect(ServerConfiguration.defaultThreads(cores: cores) == threads)
    }
}
