print("tapwire-latency: not built yet")
