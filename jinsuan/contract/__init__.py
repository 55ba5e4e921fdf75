"""The site contract: what a site agent and the platform share, and nothing of the server.

The wire schema of reports (``wire``) and of leases (``leasewire``), Ed25519 signing
(``signing``), the metric catalogue (``metrics``), the accelerator table (``accelerators``), and
the policy's calendar (``policytime``) and money (``money``) rules. An agent imports this layer
and nothing else of the platform; it depends on pydantic and cryptography only.
"""
