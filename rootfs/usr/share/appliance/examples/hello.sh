#!/bin/sh
# A sample job: says where it ran, from the machine ad HTCondor gives every job.
echo "hello from $(hostname), as $(id -un)"
grep -E '^(WorkerId|WorkerShape|CloudName|CloudType|Cpus) ' "$_CONDOR_MACHINE_AD"
sleep "${1:-20}"
echo "done"
