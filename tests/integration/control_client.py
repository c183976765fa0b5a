"""A client of insideout.v1.Scheduler in Python, from stubs that protoc and
grpc_python_plugin generated out of proto/insideout/v1/scheduler.proto.

usage: control_client.py GENERATED_DIR SOCKET WORKER CPU
Lists the workers, pins WORKER to CPU, and prints what the daemon answered."""
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from insideout.v1 import scheduler_pb2 as pb  # noqa: E402
from insideout.v1 import scheduler_pb2_grpc as rpc  # noqa: E402

sock, worker, cpu = sys.argv[2], int(sys.argv[3]), sys.argv[4]
with grpc.insecure_channel("unix:" + sock) as channel:
    stub = rpc.SchedulerStub(channel)
    listed = stub.ListWorkers(pb.ListWorkersRequest(), timeout=10)
    print("workers", len(listed.workers))
    for w in listed.workers:
        print(w.id, w.name, w.tid, w.cpus, pb.Policy.Name(w.policy))
    done = stub.SetAffinity(pb.SetAffinityRequest(target=pb.Target(worker=worker), cpus=cpu), timeout=10)
    for w in done.workers:
        print("pinned tid", w.tid, "to", w.cpus)
    if [w.cpus for w in done.workers] != [cpu]:
        sys.exit("unexpected answer: %s" % done)
    try:
        stub.SetAffinity(pb.SetAffinityRequest(target=pb.Target(worker=worker), cpus="99999"), timeout=10)
        sys.exit("a bad CPU list was accepted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
            sys.exit("unexpected error %s" % e)
        print("refused:", e.details())
