#!/usr/bin/env bash
# Fuzzes every parser of outside data for a fixed budget (issue #12, hostile input). Not part of
# CI's test run; tests/Fuzz.Tests replays what this finds.
#
#   bench/fuzz/run.sh [seconds-per-target] [--target NAME]... [--seed S]
#
# Mutates tests/Fuzz/corpus/<target>/ (generated seeds plus inputs that reached a new refusal),
# writes new crashing inputs to tests/Fuzz/crashes/<target>/ and prints executions, refusals and
# crashes per target. Exit status 1 when a new kind of bug was found: fix the parser, keep the
# reproducer (CI replays it), commit both.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-30}"
shift || true
dotnet build tests/Fuzz/InterpMesh.Fuzz.csproj -c Release -v quiet -nologo >/dev/null
dotnet tests/Fuzz/bin/Release/net10.0/linux-x64/InterpMesh.Fuzz.dll run --seconds "$seconds" "$@"
