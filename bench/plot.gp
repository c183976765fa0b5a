# PNG plots of the aggregated bench figures: gnuplot -e "dir='bench/out'" bench/plot.gp
# Reads the plot_*.dat files that aggregate.py writes into `dir` and draws, next to them:
#   throughput.png  throughput by batch size per system (log scale)
#   latency.png     round-trip percentiles per system, rtt_busy and rtt_sleep (log scale)
#   dispatch.png    in-process dispatch rate by thread count per system
# A plot whose data file is missing (its scenarios were not run) is skipped.
if (!exists("dir")) dir = "bench/out"
exists_file(f) = system("[ -s '" . f . "' ] && echo 1 || echo 0") + 0

set terminal pngcairo size 1400,760 font "DejaVu Sans,11" noenhanced
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics mytics
set key top right
set xtics rotate by -30 left
set bmargin 6

f = dir . "/plot_throughput.dat"
if (exists_file(f)) {
  set output dir . "/throughput.png"
  set title "Throughput by batch size, 64-byte messages (median of runs)"
  set ylabel "million messages / s (log)"
  set logscale y
  plot for [i=2:5] f using i:xtic(1) title columnhead(i)
  unset logscale y
}

fb = dir . "/plot_rtt_busy.dat"
fs = dir . "/plot_rtt_sleep.dat"
if (exists_file(fb) || exists_file(fs)) {
  set output dir . "/latency.png"
  set multiplot layout 1,2 title "Round trip of one 64-byte message (median of runs)"
  set logscale y
  set ylabel "microseconds (log)"
  if (exists_file(fb)) {
    set title "rtt_busy: the receiver spins or polls"
    plot for [i=2:4] fb using i:xtic(1) title columnhead(i)
  }
  if (exists_file(fs)) {
    set title "rtt_sleep: the receiver sleeps, 50 us between messages"
    plot for [i=2:4] fs using i:xtic(1) title columnhead(i)
  }
  unset multiplot
  unset logscale y
}

f = dir . "/plot_dispatch.dat"
if (exists_file(f)) {
  set output dir . "/dispatch.png"
  set title "In-process dispatch of empty continuation tasks (median of runs)"
  set ylabel "million tasks / s"
  set yrange [0:*]
  set xtics norotate
  plot for [i=2:*] f using i:xtic(1) title columnhead(i)
}
