// A continuation inside the daemon: 32 bytes, allocated from per-worker caches of a
// chunked pool (no heap allocation per continuation), moved between workers by pointer.
//
// Its first fields are the SDK's io_task (sdk/include/insideout/sdk/abi.h): the next
// step and the two words w0 and w1, which belong to the continuation's function; the
// engine reads only fn, frame, client and flags. A step is an io_step_fn, so built-ins
// and plugins' functions run through the same call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "insideout/sdk/abi.h"

namespace insideout::engine {

struct Task;
class StepContext;

// What a step returns (the SDK's io_step values).
enum class Step : io_step {
  kContinue = IO_STEP_CONTINUE,  // run task.fn (already replaced) at once, on this worker
  kYield = IO_STEP_YIELD,        // requeue on this worker; another worker may steal it
  kPark = IO_STEP_PARK,          // handed to the timer queue (StepContext::park_for())
  kWait = IO_STEP_WAIT,          // someone else resumes it (a parent waiting on children)
  kComplete = IO_STEP_COMPLETE,  // done: the result was set through StepContext
  kFail = IO_STEP_FAIL,          // done with the error set through StepContext::fail()
  kMoved = IO_STEP_MOVED,        // handed to another pool (StepContext::move_to())
};

using StepFn = io_step_fn;

// The low 9 bits of Task::flags; the high 7 bits are the plugin slot (plugin_slot()).
enum TaskFlags : std::uint16_t {
  kTaskEnvInline = 1u << 0,  // the environment is the client frame's inline bytes
  kTaskSerial = 1u << 1,     // frame indexes a SerialJob (the protobuf path)
  kTaskChild = 1u << 2,      // spawned inside the daemon; no frame of its own
  kTaskNoCancel = 1u << 3,   // has children outstanding: it decides itself when to stop
  kTaskCancelled = 1u << 4,  // resumed by a cancelled timer
  kTaskSampled = 1u << 5,    // its latency is measured
  kTaskOverLimit = 1u << 6,  // its client has too many timers
  kTaskOwnsState = 1u << 7,  // its code holds state: run it once with cutoff to drop it
  kTaskOutput = 1u << 8,     // its function writes output in place (IO_FN_OUTPUT)
};
inline constexpr unsigned kPluginSlotShift = 9;
inline constexpr std::uint32_t kMaxPluginSlots = 1u << (16 - kPluginSlotShift);  // 128

inline constexpr std::uint32_t kNoFrame = 0xFFFFFFFFu;

struct Task : io_task {
  std::uint32_t frame;   // offset of the client frame to complete, or kNoFrame
  std::uint16_t client;  // client slot
  std::uint16_t flags;   // TaskFlags | plugin slot << kPluginSlotShift
};
static_assert(sizeof(Task) == 32, "an empty continuation must stay at 32 bytes");
static_assert(sizeof(io_task) == 24);

// Which loaded plugin's code a task runs (0: the built-ins): it keeps that library
// mapped until the task is done (Scheduler::plugin_live()).
inline std::uint8_t plugin_slot(const Task& t) noexcept {
  return static_cast<std::uint8_t>(t.flags >> kPluginSlotShift);
}
inline std::uint16_t with_plugin_slot(std::uint16_t flags, std::uint8_t slot) noexcept {
  return static_cast<std::uint16_t>((flags & ((1u << kPluginSlotShift) - 1)) |
                                    (unsigned{slot} << kPluginSlotShift));
}

// Coroutine frames of continuation code (io_ctx_ops::frame_alloc): per-thread free lists
// by size class, so a coroutine continuation costs no malloc once warm (frame_pool.cc).
void* frame_allocate(std::size_t n) noexcept;
void frame_release(void* p, std::size_t n) noexcept;

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

}  // namespace insideout::engine
