#include "task.h"

namespace insideout::engine {

void TaskPool::refill(Cache& c) {
  std::lock_guard lock(mu_);
  if (!batches_.empty()) {
    c.head = batches_.back();
    batches_.pop_back();
    c.count = kBatch;
    return;
  }
  if (bump_ == kChunkTasks) {
    // Default-initialised: a fresh chunk costs address space, not memory, until used.
    chunks_.emplace_back(new Task[kChunkTasks]);
    bump_ = 0;
  }
  Task* base = chunks_.back().get() + bump_;
  const std::size_t n = kBatch;
  bump_ += n;
  for (std::size_t i = 0; i < n; ++i) {
    base[i].w0 = i + 1 < n ? reinterpret_cast<std::uint64_t>(&base[i + 1]) : 0;
  }
  c.head = base;
  c.count = static_cast<std::uint32_t>(n);
}

void TaskPool::spill(Cache& c) {
  // Keep kBatch, hand the rest (kBatch) back as one batch.
  Task* batch = c.head;
  Task* t = batch;
  for (std::uint32_t i = 1; i < kBatch; ++i) t = reinterpret_cast<Task*>(t->w0);
  c.head = reinterpret_cast<Task*>(t->w0);
  t->w0 = 0;
  c.count -= kBatch;
  std::lock_guard lock(mu_);
  batches_.push_back(batch);
}

void TaskPool::drain(Cache& c) {
  while (c.count >= kBatch) spill(c);
  // A partial batch stays with the cache's chunk memory; it is reused by nobody, which
  // costs at most kBatch tasks per stopped worker.
}

std::size_t TaskPool::bytes_reserved() const {
  std::lock_guard lock(mu_);
  return chunks_.size() * kChunkTasks * sizeof(Task);
}

}  // namespace insideout::engine
