// The engine (engine/) as the daemon hosts it: its types under the daemon's names.
#pragma once

#include "registry.h"
#include "scheduler.h"
#include "source.h"
#include "step_context.h"
#include "task.h"

namespace insideout::daemon {

using engine::engine_step;
using engine::FunctionDef;
using engine::FunctionRegistry;
using engine::kMaxPluginSlots;
using engine::kMaxPoolWorkers;
using engine::kNoFrame;
using engine::kStatusSlots;
using engine::LatencyHistogram;
using engine::PoolDirectory;
using engine::register_builtins;
using engine::Scheduler;
using engine::SchedulerConfig;
using engine::SchedulerTotals;
using engine::Step;
using engine::StepContext;
using engine::StepFn;
using engine::Task;
using engine::TaskPool;
using engine::Worker;
using engine::WorkerStats;

}  // namespace insideout::daemon
