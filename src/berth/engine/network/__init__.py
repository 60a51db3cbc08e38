"""Networking for berthd: network namespaces, bridges, IPAM, nftables, ports and DNS.

``service.NetworkService`` is the one owner; the other modules are its tools
(``netns``: named namespaces, ``links``: netlink through pyroute2, ``nft``: the
ruleset, ``ipam``: the SQLite tables and address choice, ``ports``: published ports,
``dns``: the embedded resolver). See docs/networking.md.
"""
