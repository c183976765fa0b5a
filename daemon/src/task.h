// A continuation inside the daemon: 32 bytes, allocated from per-worker caches of a
// chunked pool (no heap allocation per continuation), moved between workers by pointer.
//
// A step function runs one step and says what happens next (Step). The words w0 and w1
// belong to the step functions of the continuation's function; the daemon reads only
// fn, frame, client and flags.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace insideout::daemon {

struct Task;
class StepContext;

// What a step returns.
enum class Step : std::uint8_t {
  kContinue,  // run task.fn (already replaced) at once, on this worker: the trampoline
  kYield,     // requeue at the back of this worker's queue; another worker may steal it
  kPark,      // handed to the timer queue by StepContext::park_for(); resumes with task.fn
  kWait,      // someone else resumes it (a fanout parent waiting on its children)
  kComplete,  // done: the result was set through StepContext
  kFail,      // done with the error set through StepContext::fail()
};

using StepFn = Step (*)(Task&, StepContext&);

enum TaskFlags : std::uint16_t {
  kTaskEnvInline = 1u << 0,  // the environment is the client frame's inline bytes
  kTaskSerial = 1u << 1,     // w1 points at a SerialJob (the protobuf path)
  kTaskChild = 1u << 2,      // spawned inside the daemon; no frame of its own
  kTaskNoCancel = 1u << 3,   // has children outstanding: it decides itself when to stop
};

inline constexpr std::uint32_t kNoFrame = 0xFFFFFFFFu;

struct Task {
  StepFn fn;
  std::uint64_t w0;
  std::uint64_t w1;
  std::uint32_t frame;   // offset of the client frame to complete, or kNoFrame
  std::uint16_t client;  // client slot
  std::uint16_t flags;   // TaskFlags
};
static_assert(sizeof(Task) == 32, "an empty continuation must stay at 32 bytes");

// The pool. Tasks come in chunks of kChunkTasks; each thread keeps a Cache (a free
// list threaded through w0) and trades whole batches with the pool under a mutex, so a
// task allocated on one worker and freed on another costs no atomics on either side.
class TaskPool {
 public:
  static constexpr std::size_t kChunkTasks = 1 << 16;  // 2 MiB
  static constexpr std::uint32_t kBatch = 256;

  struct Cache {
    Task* head = nullptr;
    std::uint32_t count = 0;
  };

  TaskPool() = default;
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  Task* allocate(Cache& c) {
    if (c.head == nullptr) refill(c);
    Task* t = c.head;
    c.head = reinterpret_cast<Task*>(t->w0);
    --c.count;
    return t;
  }
  void free(Cache& c, Task* t) {
    t->w0 = reinterpret_cast<std::uint64_t>(c.head);
    c.head = t;
    if (++c.count >= 2 * kBatch) spill(c);
  }
  // Hands a cache's tasks back (a worker that stops).
  void drain(Cache& c);

  std::size_t bytes_reserved() const;

 private:
  void refill(Cache& c);
  void spill(Cache& c);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Task[]>> chunks_;
  std::size_t bump_ = kChunkTasks;  // next unused task in chunks_.back()
  std::vector<Task*> batches_;      // free lists of kBatch tasks each
};

}  // namespace insideout::daemon
