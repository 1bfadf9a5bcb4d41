// Verilator testbench of rtl/hdpa_core.sv: reads vectors written by `hdp hw vectors` (format
// in crates/hdp-hw/src/vectors.rs), drives each case through both phases and compares kept
// keys, head importance, outputs and every cycle counter with the bit-accurate model's.
// Exit status 0 only if every case is bit-exact.
#include "Vhdpa_core.h"
#include "verilated.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Reader {
  std::ifstream in;
  std::string path;
  void expect(const char *key) {
    std::string s;
    if (!(in >> s) || s != key) {
      std::fprintf(stderr, "%s: expected '%s', found '%s'\n", path.c_str(), key, s.c_str());
      std::exit(2);
    }
  }
  long long num() {
    long long x;
    if (!(in >> x)) {
      std::fprintf(stderr, "%s: truncated vector file\n", path.c_str());
      std::exit(2);
    }
    return x;
  }
  std::vector<long long> nums(const char *key, size_t n) {
    expect(key);
    std::vector<long long> v(n);
    for (auto &x : v) x = num();
    return v;
  }
};

// Bits [lo, lo + w) of a wide port (32-bit words), or of a narrow one.
template <typename T> void set_bits(T &port, int lo, int w, uint32_t val) {
  for (int b = 0; b < w; b++) {
    int bit = lo + b;
    uint32_t m = 1u << (bit % 32);
    uint32_t &word = port[bit / 32];
    word = (val >> b & 1) ? (word | m) : (word & ~m);
  }
}
template <typename T> uint32_t get_bits(const T &port, int lo, int w) {
  uint32_t v = 0;
  for (int b = 0; b < w; b++) v |= ((port[(lo + b) / 32] >> ((lo + b) % 32)) & 1u) << b;
  return v;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s VECTORS\n", argv[0]);
    return 2;
  }
  auto ctx = std::make_unique<VerilatedContext>();
  auto top = std::make_unique<Vhdpa_core>(ctx.get());
  Reader r{std::ifstream(argv[1]), argv[1]};
  if (!r.in) {
    std::fprintf(stderr, "cannot open %s\n", argv[1]);
    return 2;
  }
  r.expect("hdpa-vectors");
  if (r.num() != 2) {
    std::fprintf(stderr, "unsupported vector format version\n");
    return 2;
  }
  auto prm = r.nums("params", 10);
  const int D = prm[0];
  const long long cases = r.nums("cases", 1)[0];
  uint64_t cycles = 0;
  auto tick = [&]() {
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
    cycles++;
  };
  auto wait_done = [&](const char *what, long long id) {
    // `done` is a one-cycle pulse: look before each tick (a pruned head is done at once).
    for (uint64_t t = 0; t < 20000000ull; t++) {
      if (top->done) return;
      tick();
    }
    std::fprintf(stderr, "case %lld: %s never finished\n", id, what);
    std::exit(1);
  };
  top->rst_n = 0;
  top->ld_en = top->kc_en = top->start_a = top->start_b = 0;
  tick();
  tick();
  top->rst_n = 1;
  tick();

  long long failed = 0, mismatches = 0;
  const char *stage[8] = {"int", "prune", "frac", "exp", "sv_div", "norm", "phase_a", "phase_b"};
  for (long long c = 0; c < cases; c++) {
    r.expect("case");
    const long long id = r.num(), n = r.num(), causal = r.num(), centred = r.num(),
                    imp_pos = r.num(), cexp = r.num(), pruned = r.num();
    std::vector<long long> qkv[3];
    const char *names[3] = {"q", "k", "v"};
    for (int t = 0; t < 3; t++) qkv[t] = r.nums(names[t], n * D);
    auto kc = r.nums("kcount", n);
    const long long imp = r.nums("importance", 1)[0];
    r.expect("kept");
    std::vector<std::vector<long long>> kept(n);
    for (auto &row : kept) {
      row.resize(r.num());
      for (auto &x : row) x = r.num();
    }
    auto out = r.nums("out", n * D);
    auto cyc = r.nums("cycles", 8);

    // Load.
    for (int t = 0; t < 3; t++) {
      for (long long i = 0; i < n; i++) {
        top->ld_en = 1;
        top->ld_sel = t;
        top->ld_row = i;
        for (int d = 0; d < D; d++) set_bits(top->ld_data, 8 * d, 8, uint32_t(qkv[t][i * D + d]) & 0xff);
        tick();
      }
    }
    top->ld_en = 0;
    for (long long i = 0; i < n; i++) {
      top->kc_en = 1;
      top->kc_row = i;
      top->kc_data = kc[i];
      tick();
    }
    top->kc_en = 0;
    top->cfg_n = n;
    top->cfg_causal = causal;
    top->cfg_centred = centred;
    top->cfg_imp_pos = imp_pos;
    top->cfg_c = uint32_t(cexp);

    // Phase A.
    top->start_a = 1;
    tick();
    top->start_a = 0;
    wait_done("phase A", id);
    long long bad = 0;
    auto report = [&](const std::string &what) {
      if (bad++ < 8) std::fprintf(stderr, "case %lld: %s\n", id, what.c_str());
    };
    if ((long long)(int64_t)top->importance != imp)
      report("importance " + std::to_string((int64_t)top->importance) + " != " + std::to_string(imp));
    for (long long i = 0; i < n; i++) {
      top->rd_row = i;
      top->eval();
      if ((long long)top->rd_kcnt != (long long)kept[i].size()) {
        report("row " + std::to_string(i) + " keeps " + std::to_string(top->rd_kcnt) + " != " +
               std::to_string(kept[i].size()));
        continue;
      }
      for (size_t t = 0; t < kept[i].size(); t++) {
        top->rd_idx = t;
        top->eval();
        if ((long long)top->rd_kept != kept[i][t])
          report("row " + std::to_string(i) + " kept[" + std::to_string(t) + "] " +
                 std::to_string(top->rd_kept) + " != " + std::to_string(kept[i][t]));
      }
    }

    // Phase B.
    top->start_b = 1;
    top->prune_head = pruned;
    tick();
    top->start_b = 0;
    top->prune_head = 0;
    wait_done("phase B", id);
    for (long long i = 0; i < n; i++) {
      top->rd_row = i;
      top->eval();
      for (int d = 0; d < D; d++) {
        const long long got = (int16_t)get_bits(top->rd_out, 16 * d, 16);
        if (got != out[i * D + d])
          report("out[" + std::to_string(i) + "][" + std::to_string(d) + "] " + std::to_string(got) +
                 " != " + std::to_string(out[i * D + d]));
      }
    }
    const uint32_t got_cyc[8] = {top->cyc_int, top->cyc_prune, top->cyc_frac, top->cyc_exp,
                                 top->cyc_svdiv, top->cyc_norm, top->cyc_a, top->cyc_b};
    for (int s = 0; s < 8; s++) {
      if ((long long)got_cyc[s] != cyc[s])
        report(std::string("cycles ") + stage[s] + " " + std::to_string(got_cyc[s]) + " != " +
               std::to_string(cyc[s]));
    }
    if (bad) failed++;
    mismatches += bad;
  }
  std::printf("%s: %lld cases, %lld bit-exact (kept keys, importance, outputs, cycles), %lld failed; "
              "%llu simulated cycles\n",
              argv[1], cases, cases - failed, failed, (unsigned long long)cycles);
  top->final();
  return failed ? 1 : 0;
}
