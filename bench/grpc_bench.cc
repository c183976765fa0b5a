// grpc: gRPC's synchronous C++ API over a Unix socket,
// unix:/tmp/insideout-bench-grpc-<pid>.sock (removed at exit). The server is a child on
// cpu_for(1), forked once before this process touches gRPC (gRPC is not fork-safe once
// started); the client runs here on cpu_for(0). Every gRPC thread inherits its process's
// CPU.
//
//   grpc_unary   Echo. throughput_batch1: one call in flight, back to back. rtt_busy: back
//                to back (gRPC cannot poll: both sides wait in epoll). rtt_sleep: 50 us gap.
//   grpc_stream  Sink, client streaming. throughput_batch{1,8,64,512}: of each N Write()s
//                all but the last carry WriteOptions::set_buffer_hint(), so gRPC may hold
//                them back and send the batch in one flush.
#include <grpcpp/grpcpp.h>
#include <poll.h>

#include "bench_echo.grpc.pb.h"
#include "channel_bench.h"

namespace insideout::bench {
namespace {

namespace pb = insideout::bench::pb;

std::uint64_t seq_of(const pb::Payload& p) {
  Msg m{};
  std::memcpy(&m, p.data().data(), std::min(p.data().size(), sizeof(Msg)));
  return m.seq;
}

void set_msg(pb::Payload* p, std::uint64_t seq) {
  const Msg m = make_msg(seq);
  p->set_data(&m, sizeof(m));
}

class EchoService final : public pb::BenchEcho::Service {
  grpc::Status Echo(grpc::ServerContext*, const pb::Payload* request, pb::Payload* reply) override {
    *reply = *request;
    return grpc::Status::OK;
  }

  grpc::Status Sink(grpc::ServerContext*, grpc::ServerReader<pb::Payload>* reader,
                    pb::Ack* ack) override {
    pb::Payload p;
    std::uint64_t n = 0;
    bool in_order = true;
    while (reader->Read(&p)) {
      in_order = in_order && p.data().size() == sizeof(Msg) && seq_of(p) == n;
      ++n;
    }
    ack->set_count(n);
    ack->set_in_order(in_order);
    return grpc::Status::OK;
  }
};

// The server child: serves until the parent closes `stop_fd` (or dies).
int serve(const std::string& address, int ready_fd, int stop_fd) {
  EchoService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  const char ready = 1;
  if (write(ready_fd, &ready, 1) != 1) return 1;
  char c;
  while (read(stop_fd, &c, 1) < 0 && errno == EINTR) {
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

class Client {
 public:
  Client(const Options& o, std::shared_ptr<grpc::Channel> channel)
      : o_(o), stub_(pb::BenchEcho::NewStub(channel)) {}

  bool echo(std::uint64_t seq) {
    grpc::ClientContext ctx;
    pb::Payload request, reply;
    set_msg(&request, seq);
    return stub_->Echo(&ctx, request, &reply).ok() && seq_of(reply) == seq;
  }

  bool unary_throughput(std::uint64_t calls) {
    for (std::uint64_t i = 0; i < calls / 10; ++i) {
      if (!echo(i)) return false;
    }
    const std::uint64_t t0 = now_ns();
    for (std::uint64_t i = 0; i < calls; ++i) {
      if (!echo(i)) return false;
    }
    emit_rate(throughput_scenario(1), "grpc_unary", calls, now_ns() - t0);
    return true;
  }

  bool unary_rtt(const char* scenario, std::chrono::microseconds gap, std::uint64_t count) {
    auto samples = time_round_trips(count, gap, [&](std::uint64_t i) { return echo(i); });
    if (!samples) return false;
    emit_latency(scenario, "grpc_unary", std::move(*samples));
    return true;
  }

  bool stream_throughput(std::size_t batch, std::uint64_t total) {
    total = std::max<std::uint64_t>(total - total % batch, batch);
    grpc::ClientContext ctx;
    pb::Ack ack;
    pb::Payload p;
    const std::uint64_t t0 = now_ns();
    std::unique_ptr<grpc::ClientWriter<pb::Payload>> writer = stub_->Sink(&ctx, &ack);
    for (std::uint64_t seq = 0; seq < total; ++seq) {
      set_msg(&p, seq);
      grpc::WriteOptions options;
      if ((seq + 1) % batch != 0) options.set_buffer_hint();
      if (!writer->Write(p, options)) break;
    }
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    const std::uint64_t t1 = now_ns();
    if (!status.ok() || ack.count() != total || !ack.in_order()) {
      fail(o_, ("grpc_stream: " + status.error_message() + ", " + std::to_string(ack.count()) +
                " of " + std::to_string(total) + " received")
                   .c_str());
      return false;
    }
    emit_rate(throughput_scenario(batch), "grpc_stream", total, t1 - t0);
    return true;
  }

 private:
  const Options& o_;
  std::unique_ptr<pb::BenchEcho::Stub> stub_;
};

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

int run(const Options& o) {
  const std::string path = "/tmp/insideout-bench-grpc-" + std::to_string(getpid()) + ".sock";
  remove_at_exit(path);
  int ready[2], stop[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(stop, O_CLOEXEC) != 0) {
    fail_errno(o, "pipe2");
    return 1;
  }
  const pid_t server = spawn(cpu_for(1), [&] {
    close(ready[0]);
    close(stop[1]);
    return serve("unix:" + path, ready[1], stop[0]);
  });
  close(ready[1]);
  close(stop[0]);
  if (server < 0 || !wait_readable(ready[0], 10'000)) {
    fail(o, "the gRPC server did not come up");
    close(stop[1]);
    reap(server, std::chrono::seconds(1));
    return 1;
  }
  close(ready[0]);

  int failures = 0;
  {
    auto channel = grpc::CreateChannel("unix:" + path, grpc::InsecureChannelCredentials());
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
      fail(o, "could not connect to the gRPC server");
      ++failures;
    } else {
      Client client(o, channel);
      if (o.wants(throughput_scenario(1))) {
        failures += !client.unary_throughput(o.pick(10'000, 4'000, 50));
      }
      if (o.wants("rtt_busy")) {
        failures +=
            !client.unary_rtt("rtt_busy", std::chrono::microseconds(0), o.pick(20'000, 4'000, 50));
      }
      if (o.wants("rtt_sleep")) {
        failures += !client.unary_rtt("rtt_sleep", kSleepGap, o.pick(10'000, 2'000, 50));
      }
      for (std::size_t b : kBatches) {
        if (o.wants(throughput_scenario(b))) {
          failures += !client.stream_throughput(b, o.pick(200'000, 100'000, 1'000));
        }
      }
    }
  }
  close(stop[1]);  // the server shuts down on EOF
  if (!reap(server, std::chrono::seconds(10))) {
    fail(o, "the gRPC server failed");
    ++failures;
  }
  unlink(path.c_str());
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace insideout::bench

int main(int argc, char** argv) {
  using namespace insideout::bench;
  const Options o = parse_options(
      argc, argv,
      "gRPC over a Unix socket: unary Echo (grpc_unary) and client streaming (grpc_stream).",
      channel_scenarios(true));
  pin_thread(cpu_for(0));
  return run(o);
}
