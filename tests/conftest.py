import os

# The htcondor wheel looks for a condor_config at import; the host has none and needs none.
os.environ.setdefault("CONDOR_CONFIG", "ONLY_ENV")
# testcontainers' reaper image cannot be pulled here (no registry); our fixtures clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
