"""`volagent doctor`: checks this host for everything volagent needs and says what to fix.

The checks of the contract, in the order a boot needs them: the mount helpers (NFS client,
amazon-efs-utils), instance metadata, the AWS permissions discovery uses, the filesystem's DNS
name, TCP 2049 to the mount target, the Docker engine, the start guard's agreement with
Docker's daemon.json, and the apps allowed privilege. A check that needs an earlier one's
answer is skipped when that failed.
Each line is PASS, FAIL, WARN or SKIP, and every FAIL carries its fix: the package to install,
the security group rule, the IAM action, the daemon.json line. Exit 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import sys

from volagent.aws.discovery import Resolver, resolve_host
from volagent.config import Config
from volagent.ops.doctor import aws_checks, host_checks
from volagent.ops.doctor.result import CheckResult, json_report, report


def run_checks(cfg: Config, resolve: Resolver = resolve_host) -> list[CheckResult]:
    """Every check, in order; `resolve` looks names up (the system resolver by default)."""
    family = host_checks.distro_family()
    results = [
        host_checks.check_nfs_client(cfg, family),
        host_checks.check_efs_utils(cfg, family),
    ]
    results += aws_checks.run_checks(cfg, resolve)
    results += [host_checks.check_docker(cfg), host_checks.check_guard(cfg)]
    results.append(host_checks.check_privileged_apps(cfg))
    return results


def main(args: argparse.Namespace, cfg: Config) -> int:
    results = run_checks(cfg)
    if getattr(args, "json", False):
        sys.stdout.write(json_report(results))
    else:
        sys.stdout.write(report(results, color=sys.stdout.isatty()))
    return 1 if any(r.failing for r in results) else 0
