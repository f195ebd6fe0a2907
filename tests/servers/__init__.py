"""Purpose-built MCP servers that the tests run as upstreams."""
