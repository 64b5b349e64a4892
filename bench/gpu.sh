#!/usr/bin/env bash
# Kept for old instructions: the GPU run is bench/device_check.sh now (offline installs from
# bench/wheels/, the GPU tests with skips counted as failures, end to end cuda vs cpu,
# 64-bit indexing, subnormals, throughput, compute-sanitizer). See its header.
exec bash "$(dirname "$0")/device_check.sh" "$@"
