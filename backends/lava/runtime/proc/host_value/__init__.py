"""The ``HostValue`` process: a real value known before the run."""
