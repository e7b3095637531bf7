"""RunPod control: REST v2 client (runpod), SSH to pods (pods), ledger/teardown/reap (ledger), prices and cost
(pricing), budget guard (budget), provisioning (provision), and a RunPod emulator held to the spec (emulator)."""
