"""Kubo (IPFS) building blocks: RPC client, local UnixFS CIDs, CAR reading."""
