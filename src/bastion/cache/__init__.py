"""Caching: the tiered L1/L2 cache library and the RFC 9111 HTTP response cache stage."""
