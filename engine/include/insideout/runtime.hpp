// insideout::Runtime: the engine in your own process, with no daemon. The same
// continuation code (<insideout/sdk.hpp>: step functions, coroutines, a plugin's
// functions) runs on the Runtime's own pinned workers, with the same results as in
// insideoutd, so plugin authors unit-test their functions with GoogleTest and programs
// use insideout's scheduling in-process.
//
//   insideout::Runtime rt;                                 // one worker per allowed CPU
//   rt.add("demo.add_one", insideout::step<add_one>);
//   insideout::Runtime::Result r = rt.call("demo.add_one", 41);   // r.value == 42
//
// Functions are registered before the first submission (the registry is read without a
// lock afterwards). Built-ins (noop, echo, checksum, fanout, chain, sleep) are there.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "insideout/sdk/abi.h"

namespace insideout {

struct RuntimeOptions {
  struct Pool {
    std::string name;
    std::uint32_t workers = 0;  // 0: one per CPU in `cpus` (or per allowed CPU)
    std::vector<int> cpus;      // pinned round robin; empty: the process's allowed CPUs
  };
  // The first is the default pool (where submissions go); "default" when empty.
  std::vector<Pool> pools;
  bool pin = true;  // pin workers to their CPUs
  // The event queue's backend: "auto" (epoll, measured the faster),
  // "epoll" or "io_uring". Continuations waiting on signals need those signals blocked
  // in every thread of the process before the Runtime is made (see the SDK's signal()).
  std::string event_backend = "auto";
};

class Runtime {
 public:
  // Status codes are insideout::shm::Status values (1 = ok); see status_name().
  struct Result {
    std::uint16_t status = 0;
    std::uint32_t detail = 0;
    std::uint64_t value = 0;
    std::string data;     // result bytes (the first result_len bytes of the environment)
    std::string message;  // a failed function's own words
    bool ok() const noexcept { return status == 1; }
    std::string error() const;
  };

  class Handle {
   public:
    Handle() = default;
    Handle(Handle&&) noexcept;
    Handle& operator=(Handle&&) noexcept;
    ~Handle();
    bool done() const noexcept;
    // Blocks until the continuation has completed (without spinning).
    Result wait();

    struct Job;  // the engine's side (runtime.cc)

   private:
    friend class Runtime;
    explicit Handle(std::shared_ptr<Job> job) noexcept;
    std::shared_ptr<Job> job_;
  };

  explicit Runtime(RuntimeOptions options = {});
  ~Runtime();  // waits for what is in flight, then stops the workers
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Registers a function (before the first submission). False when the name is taken.
  bool add(std::string name, io_step_fn entry, std::uint32_t flags = 0, std::string help = {},
           std::uint64_t max_arg = 0);
  // Registers every function of a plugin (its entry point's info, e.g. from
  // insideout_plugin_v1() linked into a test): "name.function". False (and *error) when
  // its ABI or SDK version is not this one's, or its init fails.
  bool add_plugin(const io_plugin_info* info, std::string* error = nullptr);

  // Submits `function` with a scalar argument and an environment (copied; for IO_FN_OUTPUT
  // functions it is also the output's room). An unknown name fails the handle at once,
  // naming the closest registered names.
  Handle submit(std::string_view function, std::uint64_t arg = 0,
                std::span<const std::byte> env = {});
  Result call(std::string_view function, std::uint64_t arg = 0,
              std::span<const std::byte> env = {}) {
    return submit(function, arg, env).wait();
  }

  // Stops taking submissions (later ones fail with kDraining) and cancels every parked
  // continuation (a server waiting on accept(), a sleep): their handles complete, cut
  // off. Waits up to `timeout` for the running ones; true when nothing is in flight.
  // The destructor waits for what is in flight: call stop() first when some of it may
  // wait forever.
  bool stop(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  std::vector<std::string> functions() const;
  std::uint32_t workers(std::string_view pool = "default") const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace insideout
