"""What the tests and benchmarks check the package against; never imported by the package.

`torch_twin` runs a graph with PyTorch (a test and benchmark dependency only): import it as
`unity_legion.testing.torch_twin`, not from here, so importing this package never loads torch.
"""
