"""Tests of the application (minisigma cli, reproduce, report, bench)."""
