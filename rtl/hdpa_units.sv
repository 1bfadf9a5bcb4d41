// The HDPA core's arithmetic units, one module per lane so that synthesis reports each unit's
// cells (rtl/synth.sh). hdpa_core instantiates KI integer lanes, P pruning lanes, KF fraction
// lanes, E exponential units, KS S.V lanes, D normalization lanes and one divider step.
// Widths and rounding: crates/hdp-hw/src/core.rs.
/* verilator lint_off DECLFILENAME */

// Integer score engine lane: S = sum_d est(q_d) est(k_d), est = floor(code / 2^F) or
// centred 2 floor(code / 2^F) + 1 (hdp.md steps 2 and 4). D low-bit multipliers.
module hdpa_int_lane #(
    parameter int D = 32,
    parameter int F = 3
) (
    input  logic [D*8-1:0]      q,
    input  logic [D*8-1:0]      k,
    input  logic                cen,
    output logic signed [17:0]  s
);
  // Operands at their real width: floor(code / 2^F) has 8 - F bits, the centred form 9 - F.
  localparam int EW = 9 - F;
  function automatic logic signed [EW-1:0] est(input logic [7:0] c, input logic centred);
    logic signed [EW-1:0] i;
    i = EW'($signed(c) >>> F);
    est = centred ? EW'((i <<< 1) + EW'(1)) : i;
  endfunction
  logic signed [23:0] acc;
  logic signed [2*EW-1:0] prod;
  always_comb begin
    acc = '0;
    for (int i = 0; i < D; i++) begin
      prod = est(q[i*8+:8], cen) * est(k[i*8+:8], cen);
      acc = acc + 24'(prod);
    end
    s = acc[17:0];
  end
endmodule

// Pruning unit lane: one offset-binary score against the 2^R - 1 candidates of a search pass
// (candidate m in bits m*18 +: 18, m = 0 for digit 1) and against the final threshold.
module hdpa_prune_lane #(
    parameter int R = 3
) (
    input  logic [17:0]                  u,
    input  logic [((1<<R)-1)*18-1:0]     cands,
    input  logic [17:0]                  thr,
    output logic [(1<<R)-2:0]            ge,
    output logic                         gt,
    output logic                         eq
);
  for (genvar m = 0; m < (1 << R) - 1; m++) begin : g_cmp
    assign ge[m] = u >= cands[m*18+:18];
  end
  assign gt = u > thr;
  assign eq = u == thr;
endmodule

// Fraction engine lane: A = Q_int.K + Q_frac.K_int = 2^-F (Q.K - Q_frac.K_frac) (hdp.md
// step 6). 2 D multipliers (5 x 8 and 3 x 5 bits at F = 3).
module hdpa_frac_lane #(
    parameter int D = 32,
    parameter int F = 3
) (
    input  logic [D*8-1:0]      q,
    input  logic [D*8-1:0]      k,
    output logic signed [19:0]  a
);
  localparam int IW = 8 - F;  // integer part of a code
  logic signed [23:0] acc;
  logic signed [IW-1:0] qi, ki;
  logic [F-1:0] qf;
  logic signed [IW+7:0] p1;
  logic signed [IW+F:0] p2;
  always_comb begin
    acc = '0;
    qi = '0; ki = '0; qf = '0; p1 = '0; p2 = '0;
    for (int i = 0; i < D; i++) begin
      qi = q[i*8+F+:IW];
      ki = k[i*8+F+:IW];
      qf = q[i*8+:F];
      p1 = qi * $signed(k[i*8+:8]);
      p2 = $signed({1'b0, qf}) * ki;
      acc = acc + 24'(p1) + 24'(p2);
    end
    a = acc[19:0];
  end
endmodule

// Softmax unit: e = 2^16 2^-(x C / 2^20) = LUT[t mod 256] >> (t / 256), t = round(x C / 2^12).
module hdpa_exp_unit (
    input  logic [20:0] x,
    input  logic [31:0] c,
    output logic [16:0] e
);
`include "exp2_lut.svh"
  logic [52:0] y;
  logic [40:0] t;
  always_comb begin
    y = 53'(x) * 53'(c) + 53'(1 << 11);
    t = 41'(y >> 12);
    e = (t[40:8] >= 33'd17) ? 17'd0 : exp2_lut(t[7:0]) >> t[12:8];
  end
endmodule

// S.V engine lane: the D products e v_d of one kept key (17-bit weight x 8-bit code).
module hdpa_sv_lane #(
    parameter int D = 32
) (
    input  logic [16:0]        e,
    input  logic [D*8-1:0]     v,
    output logic [D*26-1:0]    p
);
  always_comb begin
    for (int i = 0; i < D; i++) p[i*26+:26] = 26'($signed({1'b0, e}) * $signed(v[i*8+:8]));
  end
endmodule

// Normalization lane: out = (acc R + 2^31) >> 32, V's code with 8 more fraction bits.
module hdpa_norm_lane (
    input  logic signed [39:0] acc,
    input  logic [24:0]        r,
    output logic [15:0]        out
);
  logic signed [64:0] prod;
  always_comb begin
    prod = 65'(acc) * $signed({1'b0, r}) + 65'sd2147483648;
    out = 16'(prod >>> 32);
  end
endmodule

// One step of the restoring divider computing floor(2^40 / Z): shift in the next numerator
// bit, subtract Z when it fits.
module hdpa_div_step #(
    parameter int ZW = 28
) (
    input  logic [ZW-1:0] rem,
    input  logic          bit_in,
    input  logic [ZW-1:0] z,
    output logic [ZW-1:0] rem_next,
    output logic          take
);
  logic [ZW:0] shifted;
  always_comb begin
    shifted = {rem, bit_in};
    take = shifted >= {1'b0, z};
    rem_next = ZW'(take ? shifted - {1'b0, z} : shifted);
  end
endmodule
