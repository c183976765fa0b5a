// The counters area: a file $INSIDEOUT_RUNTIME_DIR/stats (mode 0640) that insideoutd
// maps and refreshes, and that `insideoutctl stats` maps read-only, so statistics can
// be read without asking the daemon anything (as Aeron's AeronStat reads the CnC file).
//
// Memory ordering: the daemon writes every counter with relaxed stores (they are
// independent statistics; a reader may see one counter newer than another). The header's
// `version` is stored last with release (V1) when the area is initialised; readers load
// it with acquire (V2) and treat 0 as "not ready" and any other mismatch as an error.
// Bump kStatsLayoutVersion when a field changes width, order or meaning.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "insideout/shm/layout.h"

namespace insideout::shm {

inline constexpr std::uint64_t kStatsMagic = 0x53544154534f4900ull;  // "\0IOSTATS", little-endian
inline constexpr std::uint32_t kStatsLayoutVersion = 1;
inline constexpr std::uint32_t kStatsMaxWorkers = 256;
inline constexpr const char* kStatsFileName = "stats";

struct StatsHeader {
  std::uint64_t magic;
  std::atomic<std::uint32_t> version;  // V1: stored last, release
  std::uint32_t max_workers;
  std::uint32_t pid;
  std::atomic<std::uint32_t> workers;
  std::uint64_t start_realtime_ns;
  std::atomic<std::uint64_t> updated_realtime_ns;
  std::atomic<std::uint64_t> clients;
  std::uint8_t pad[16];
};

// Totals over the daemon's life (workers' counters summed; clients' since they came).
struct StatsTotals {
  std::atomic<std::uint64_t> submitted;  // accepted from clients (rings and serialized)
  std::atomic<std::uint64_t> completed;
  std::atomic<std::uint64_t> failed;
  std::atomic<std::uint64_t> rejected;  // invalid frames
  std::atomic<std::uint64_t> steps;
  std::atomic<std::uint64_t> steals;
  std::atomic<std::uint64_t> parks;
  std::atomic<std::uint64_t> timer_parks;
  std::atomic<std::uint64_t> backpressure;
  std::atomic<std::uint64_t> spawned;
  std::atomic<std::uint64_t> faulted;  // clients failed and disconnected: unusable rings
  std::atomic<std::uint64_t> reserved[5];
};

struct StatsWorker {
  std::atomic<std::uint64_t> tid;
  std::atomic<std::uint64_t> steps;
  std::atomic<std::uint64_t> completed;
  std::atomic<std::uint64_t> failed;
  std::atomic<std::uint64_t> steals;
  std::atomic<std::uint64_t> parks;
  std::atomic<std::uint64_t> queue_depth;
  std::atomic<std::uint64_t> accepted;
};

struct StatsArea {
  StatsHeader header;
  StatsTotals totals;
  StatsWorker workers[kStatsMaxWorkers];
};

static_assert(std::is_standard_layout_v<StatsArea>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(StatsHeader) == kCacheLine);
static_assert(sizeof(StatsTotals) == 2 * kCacheLine);
static_assert(sizeof(StatsWorker) == kCacheLine);
static_assert(offsetof(StatsArea, totals) == 64);
static_assert(offsetof(StatsArea, workers) == 192);
static_assert(sizeof(StatsArea) == 192 + kStatsMaxWorkers * kCacheLine);

}  // namespace insideout::shm
