from appliance.config import CloudConfig, WorkerSize
from appliance.matching import worker_start
from appliance.shapes import Shape
from appliance.workerconf import WorkerSpec, condor_config, worker_files

CLOUD = CloudConfig("docker", "docker", worker=WorkerSize(cpus=2, memory=2048, attributes={"HasDocker": True, "Site": 'my "lab"'}))
SPEC = WorkerSpec("docker-abc123", CLOUD, "mypool", "10.0.0.5", token="SECRET-TOKEN", key=b"SECRET-KEY")


def test_config_names_the_worker_and_its_trust():
    text = condor_config(SPEC, "/var/lib/condor-worker")
    for line in ["CONDOR_HOST = 10.0.0.5:9618", "MASTER_NAME = docker-abc123", "STARTD_NAME = docker-abc123",
                 'WorkerId = "docker-abc123"', 'CloudName = "docker"', 'CloudType = "docker"', 'WorkerShape = "default"',
                 "HasDocker = True", 'Site = "my \\"lab\\""', "NUM_CPUS = 2", "MEMORY = 2048",
                 "TRUST_DOMAIN = mypool", "ALLOW_ADMINISTRATOR = admin@mypool", "CCB_ADDRESS = $(COLLECTOR_HOST)",
                 "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS", f"START = {worker_start(CLOUD.shapes[0])}",
                 'WorkerImage = "default"', 'WorkerImageRef = ""',
                 "FILESYSTEM_DOMAIN = docker-abc123.mypool", "LOCAL_DIR = /var/lib/condor-worker"]:
        assert line in text.splitlines(), line
    assert "SECRET" not in text


def test_files_carry_the_secrets_with_private_modes():
    files = worker_files(SPEC, "/w")
    assert files["tokens.d/pool"] == (b"SECRET-TOKEN\n", 0o600)
    assert files["keys/worker-docker-abc123"] == (b"SECRET-KEY", 0o600)
    assert files["condor_config"][1] == 0o640


def test_spec_repr_hides_secrets():
    assert "SECRET" not in repr(SPEC) and "SECRET" not in str(SPEC)


def test_explicit_port_is_kept():
    assert "CONDOR_HOST = cm.example.org:9700" in condor_config(
        WorkerSpec("w", CLOUD, "p", "cm.example.org:9700"), "/w").splitlines()


SMALL = Shape("small", 1, 512, 4096)
GPU = Shape("gpu", 8, 30720, 102400, gpus=1, attributes={"HasSSD": True}, price=1.2)
SHAPED = CloudConfig("docker", "docker", shapes=(SMALL, GPU))


def lines(spec):
    return condor_config(spec, "/w").splitlines()


def test_the_worker_is_the_size_of_its_shape_and_advertises_it():
    spec = WorkerSpec("docker-gpu001", SHAPED, "mypool", "10.0.0.5", shape=GPU)
    assert spec.size is GPU
    text = lines(spec)
    for line in ["NUM_CPUS = 8", "MEMORY = 30720", 'WorkerShape = "gpu"', "HasSSD = True", "use feature : GPUs",
                 "STARTD_ATTRS = $(STARTD_ATTRS) ApplianceWorker WorkerId CloudName CloudType WorkerShape WorkerImage "
                 "WorkerImageRef HasSSD"]:
        assert line in text, line
    # the slot accounts follow the shape's cpus (the installers read NUM_CPUS)
    small = lines(WorkerSpec("docker-small01", SHAPED, "mypool", "10.0.0.5", shape=SMALL))
    assert {"NUM_CPUS = 1", "MEMORY = 512", 'WorkerShape = "small"'} <= set(small)
    assert "use feature : GPUs" not in small and "HasSSD = True" not in small


def test_without_a_shape_the_spec_is_its_clouds_first():
    spec = WorkerSpec("docker-first1", SHAPED, "mypool", "10.0.0.5")
    assert spec.size is SMALL and 'WorkerShape = "small"' in lines(spec)
    assert repr(spec) == "WorkerSpec('docker-first1', cloud='docker', shape='small', condor_host='10.0.0.5')"
