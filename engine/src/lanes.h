// A worker's private run queue, fair by client: one FIFO lane per client that has work
// here, served round robin, one task (one step, or a run of kContinue steps) per turn.
// A client with a million queued tasks (a fanout, a flood of chains) delays another
// client's next task by one task per other lane, not by its whole backlog. Children
// spawned inside the daemon carry their root's client, so they queue in its lane.
//
// Owner only: no atomics. Lanes are found through a table indexed by client slot, and
// emptied lanes keep their storage for reuse, so the busy path does not allocate. (A
// lane is a ring over a vector, not a std::deque: libstdc++'s deque allocates when it is
// made or moved from, which cost a malloc and a free per step of a lone chain.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "task.h"

namespace insideout::engine {

// A FIFO of tasks in a ring over a vector that only grows: moving one moves its buffer.
class TaskFifo {
 public:
  bool empty() const noexcept { return count_ == 0; }
  Task* front() const noexcept { return buf_[head_]; }
  void push_back(Task* t) {
    if (count_ == buf_.size()) grow();
    buf_[(head_ + count_) & (buf_.size() - 1)] = t;
    ++count_;
  }
  void pop_front() noexcept {
    head_ = (head_ + 1) & (buf_.size() - 1);
    if (--count_ == 0) head_ = 0;
  }
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < count_; ++i) f(buf_[(head_ + i) & (buf_.size() - 1)]);
  }
  void clear() noexcept { head_ = count_ = 0; }

 private:
  void grow() {
    std::vector<Task*> next(buf_.empty() ? 16 : buf_.size() * 2);
    for (std::size_t i = 0; i < count_; ++i) next[i] = buf_[(head_ + i) & (buf_.size() - 1)];
    buf_ = std::move(next);
    head_ = 0;
  }
  std::vector<Task*> buf_;  // a power of two long, or empty
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

class LaneQueue {
 public:
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }

  void push_back(Task* t) {
    lane_for(t->client).push_back(t);
    ++size_;
  }

  // The task pop_front() returns next; nullptr when empty.
  Task* front() const noexcept {
    if (size_ == 0) return nullptr;
    return lanes_[next_ < lanes_.size() ? next_ : 0].tasks.front();
  }

  // The oldest task of the next lane in turn; nullptr when empty.
  Task* pop_front() {
    if (size_ == 0) return nullptr;
    if (next_ >= lanes_.size()) next_ = 0;
    Lane& lane = lanes_[next_];
    Task* t = lane.tasks.front();
    lane.tasks.pop_front();
    --size_;
    if (lane.tasks.empty()) {
      // The only lane stays for its client's next push (a lone chain then costs no lane
      // bookkeeping per step); lane_for() drops it when another client's lane comes.
      if (lanes_.size() == 1) {
        next_ = 0;
      } else {
        remove(next_);  // the last lane moves into this index: it is next
      }
    } else {
      ++next_;
    }
    return t;
  }

  // Every task, lanes one after the other (a retiring worker hands them over).
  void drain_into(std::vector<Task*>* out) {
    for (Lane& lane : lanes_) {
      lane.tasks.for_each([&](Task* t) { out->push_back(t); });
      lane.tasks.clear();
      index_[lane.client] = 0;
      spare_.push_back(std::move(lane.tasks));
    }
    lanes_.clear();
    size_ = 0;
    next_ = 0;
  }

 private:
  struct Lane {
    std::uint32_t client;
    TaskFifo tasks;
  };

  TaskFifo& lane_for(std::uint32_t client) {
    if (client >= index_.size()) index_.resize(client + 1, 0);
    if (index_[client] == 0 && lanes_.size() == 1 && lanes_[0].tasks.empty()) remove(0);
    std::uint32_t& i = index_[client];
    if (i == 0) {
      Lane lane{client, {}};
      if (!spare_.empty()) {
        lane.tasks = std::move(spare_.back());
        spare_.pop_back();
      }
      lanes_.push_back(std::move(lane));
      i = static_cast<std::uint32_t>(lanes_.size());
    }
    return lanes_[i - 1].tasks;
  }

  void remove(std::size_t at) {
    index_[lanes_[at].client] = 0;
    spare_.push_back(std::move(lanes_[at].tasks));
    if (at + 1 != lanes_.size()) {
      lanes_[at] = std::move(lanes_.back());
      index_[lanes_[at].client] = static_cast<std::uint32_t>(at + 1);
    }
    lanes_.pop_back();
  }

  std::vector<Lane> lanes_;           // lanes with work, in no particular order
  std::vector<std::uint32_t> index_;  // by client slot: its lane's index + 1, or 0
  std::vector<TaskFifo> spare_;
  std::size_t next_ = 0;  // the lane whose turn it is
  std::size_t size_ = 0;
};

}  // namespace insideout::engine
