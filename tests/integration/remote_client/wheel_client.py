"""A remote submitter with the PyPI htcondor wheel (htcondor2), run by test_remote_submission.py.

    python wheel_client.py DIR       submit DIR/job.sh with DIR/in.txt, spooled; wait; retrieve

Configured only by the environment, as docs/remote-submission.md shows: _CONDOR_CONDOR_HOST,
_CONDOR_SCHEDD_HOST, _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS, _CONDOR_SEC_TOKEN_DIRECTORY.
Prints one JSON object: the cluster, its owner, seconds from submit to running, the output.
"""
import json
import os
import sys
import time

import htcondor2 as htcondor


def main(directory: str) -> None:
    os.chdir(directory)
    collector = htcondor.Collector()
    schedd = htcondor.Schedd(collector.locate(htcondor.DaemonType.Schedd, os.environ["_CONDOR_SCHEDD_HOST"]))
    submit = htcondor.Submit({
        "executable": "job.sh", "transfer_input_files": "in.txt",
        "output": "out.txt", "error": "err.txt", "log": "job.log",
        "request_cpus": "1", "request_memory": "128", "request_disk": "10MB",
    })
    t0 = time.monotonic()
    result = schedd.submit(submit, spool=True)       # the job waits, held, for its files...
    schedd.spool(result)                             # ...which are sent now
    cluster = result.cluster()
    running_after, deadline = None, time.monotonic() + 180
    while time.monotonic() < deadline:
        ad = schedd.query(f"ClusterId == {cluster}", ["JobStatus", "Owner", "User", "HoldReasonCode", "HoldReason"])[0]
        status = ad["JobStatus"]
        if status == 2 and running_after is None:
            running_after = time.monotonic() - t0
        if status == 4:
            break
        if status == 5 and ad.get("HoldReasonCode") != 16:      # 16: still spooling its input
            raise SystemExit(f"job {cluster} held: {ad.get('HoldReason')}")
        time.sleep(0.1)
    else:
        raise SystemExit(f"job {cluster} did not complete: status {status}")
    schedd.retrieve(f"ClusterId == {cluster}")
    with open("out.txt") as f:
        out = f.read()
    print(json.dumps({"version": htcondor.version(), "cluster": cluster, "owner": ad["Owner"], "user": ad["User"],
                      "running_after": running_after, "out": out}))


if __name__ == "__main__":
    main(sys.argv[1])
