// HDPA attention core: one head of Hybrid Dynamic Pruning attention (shared/design/hdp.md),
// block size 1, top-k row thresholds (a digit-serial search, R bits per pass), approximated
// scores, fixed-point softmax and S.V.
//
// The bit-accurate model of this module is crates/hdp-hw/src/core.rs; every width, rounding and
// cycle here is defined there (module docs), and rtl/test.sh checks the two bit for bit on
// vectors the model writes (`hdp hw vectors`). Behavioural memories stand for SRAMs.
//
// Use: load Q, K, V rows (ld_*) and per-row keep counts (kc_*), set cfg_*, pulse start_a.
// Phase A computes the integer scores, the kept keys of every row and the head importance;
// after `done`, the host compares importances across heads and pulses start_b with prune_head.
// Phase B computes the outputs of a surviving head (a pruned head reads as zero).
module hdpa_core #(
    parameter int D    = 32,  // head dimension
    parameter int NMAX = 64,  // largest sequence
    parameter int F    = 3,   // fraction bits of the 8-bit Q/K codes
    parameter int KI   = 8,   // integer engine: keys per cycle (D multipliers each)
    parameter int P    = 16,  // pruning unit: lanes (scores per cycle)
    parameter int R    = 3,   // pruning unit: threshold bits per search pass (1, 2, 3 or 6)
    parameter int KF   = 2,   // fraction engine: kept keys per cycle (2 D multipliers each)
    parameter int E    = 8,   // softmax unit: exponentials per cycle
    parameter int KS   = 2,   // S.V engine: kept keys per cycle (D multipliers each)
    parameter int NL   = 4,   // normalization: output dimensions per cycle
    parameter int IW   = $clog2(NMAX)  // index width (derived)
) (
    input  logic                clk,
    input  logic                rst_n,
    // load port: one row of D 8-bit codes per cycle; keep counts one per cycle
    input  logic                ld_en,
    input  logic [1:0]          ld_sel,     // 0 Q, 1 K, 2 V
    input  logic [IW-1:0]       ld_row,
    input  logic [D*8-1:0]      ld_data,
    input  logic                kc_en,
    input  logic [IW-1:0]       kc_row,
    input  logic [IW:0]         kc_data,
    // configuration, stable during a phase
    input  logic [IW:0]         cfg_n,
    input  logic                cfg_causal,
    input  logic                cfg_centred,
    input  logic                cfg_imp_pos,
    input  logic [31:0]         cfg_c,
    // commands and status
    input  logic                start_a,
    input  logic                start_b,
    input  logic                prune_head,
    output logic                busy,
    output logic                done,
    output logic signed [63:0]  importance,
    // read port
    input  logic [IW-1:0]       rd_row,
    input  logic [IW-1:0]       rd_idx,
    output logic [D*16-1:0]     rd_out,
    output logic [IW:0]         rd_kcnt,
    output logic [IW-1:0]       rd_kept,
    // cycle counters per stage and per phase
    output logic [31:0]         cyc_int,
    output logic [31:0]         cyc_prune,
    output logic [31:0]         cyc_frac,
    output logic [31:0]         cyc_exp,
    output logic [31:0]         cyc_svdiv,
    output logic [31:0]         cyc_norm,
    output logic [31:0]         cyc_a,
    output logic [31:0]         cyc_b
);
  localparam int SW = 18;        // integer score width (offset-binary search width)
  localparam int AW = 20;        // approximated score width
  localparam int ACCW = 40;      // S.V accumulator
  localparam int ZW = 28;        // softmax sum
  localparam int QW = 25;        // quotient bits of floor(2^40 / Z) (Z >= 2^16)
  localparam int CW = IW + 1;    // counts up to NMAX
  localparam logic [SW-1:0] OFF = {1'b1, {(SW-1){1'b0}}};
  localparam int NC = (1 << R) - 1;  // search candidates per pass (digits 1 .. 2^R - 1)

  localparam logic [3:0] S_IDLE = 4'd0, S_INT = 4'd1, S_SEARCH = 4'd2,
                         S_EMIT = 4'd4, S_FRAC = 4'd5, S_EXP = 4'd6, S_SVDIV = 4'd7,
                         S_NORM = 4'd8;

  // ---------------------------------------------------------------- memories (SRAMs)
  logic [D*8-1:0]          qmem [0:NMAX-1];
  logic [D*8-1:0]          kmem [0:NMAX-1];
  logic [D*8-1:0]          vmem [0:NMAX-1];
  logic [CW-1:0]           kcmem [0:NMAX-1];
  logic signed [SW-1:0]    smem [0:NMAX-1];        // integer scores of the current row
  logic [IW-1:0]           klist [0:(1<<(2*IW))-1];  // kept keys: row r, slot t at {r, t}
  logic [CW-1:0]           kcnt [0:NMAX-1];        // kept keys per row
  logic signed [AW-1:0]    amem [0:NMAX-1];        // approximated scores of the row's kept keys
  logic [16:0]             emem [0:NMAX-1];        // exponentials of the row's kept keys
  logic [D*16-1:0]         omem [0:NMAX-1];        // outputs

  // ---------------------------------------------------------------- state
  logic [3:0]              state;
  logic [CW-1:0]           row;
  logic [CW-1:0]           pos;         // position within the current pass
  logic [4:0]              bitpos;
  logic [SW-1:0]           thr;
  logic [CW-1:0]           cnt [0:NC-1];  // scores reaching each candidate, this pass so far
  logic [CW-1:0]           above;         // scores reaching the lowest candidate that failed
  logic [CW-1:0]           gt;
  logic [CW-1:0]           eqseen;
  logic [CW-1:0]           kept_n;
  logic signed [AW-1:0]    amax;
  logic [ZW-1:0]           zsum;
  logic signed [ACCW-1:0]  acc [0:D-1];
  logic [ZW-1:0]           div_rem;
  logic [QW-1:0]           div_q;
  logic [5:0]              div_i;
  logic                    sv_done, div_done, head_pruned;

  // ---------------------------------------------------------------- arithmetic
  // Address of slot t of row r's kept list.
  function automatic logic [2*IW-1:0] laddr(input logic [IW-1:0] r, input logic [IW-1:0] t);
    laddr = {r, t};
  endfunction

  // ---------------------------------------------------------------- row-level combinational
  logic [CW-1:0] nv, kk, kn;
  logic [D*8-1:0] qrow;
  always_comb begin
    nv = cfg_causal ? row + 1'b1 : cfg_n;
    kk = kcmem[row[IW-1:0]];
    kn = kcnt[row[IW-1:0]];
    qrow = qmem[row[IW-1:0]];
  end

  // Integer-engine lanes.
  logic signed [SW-1:0] s_val [0:KI-1];
  for (genvar l = 0; l < KI; l++) begin : g_int
    hdpa_int_lane #(.D(D), .F(F)) lane (
        .q(qrow), .k(kmem[IW'(pos + CW'(l))]), .cen(cfg_centred), .s(s_val[l]));
  end

  // Pruning-unit lanes of the current chunk.
  logic [P-1:0]     lane_ok, lane_gt, lane_eq, lane_sel;
  logic [SW-1:0]    lane_u [0:P-1];
  logic [NC*SW-1:0] cands;
  logic [CW-1:0]    n_ge [0:NC-1];
  logic [CW-1:0]    n_eq, n_sel;
  logic signed [63:0] imp_chunk;
  logic [CW-1:0]    sel_before [0:P-1];
  logic [NC-1:0]    cmp_ge [0:P-1];
  logic [P-1:0]     cmp_gt, cmp_eq;
  always_comb begin
    for (int l = 0; l < P; l++) lane_u[l] = smem[IW'(pos + CW'(l))] ^ OFF;
  end
  for (genvar l = 0; l < P; l++) begin : g_prune
    hdpa_prune_lane #(.R(R)) lane (
        .u(lane_u[l]), .cands(cands), .thr(thr), .ge(cmp_ge[l]), .gt(cmp_gt[l]),
        .eq(cmp_eq[l]));
  end
  // The pass's candidates extend the threshold by one digit at bits bitpos +: R.
  always_comb begin
    for (int m = 0; m < NC; m++) cands[m*SW+:SW] = thr | (SW'(m + 1) << bitpos);
  end
  always_comb begin
    n_eq = '0; n_sel = '0;
    for (int m = 0; m < NC; m++) n_ge[m] = '0;
    imp_chunk = '0;
    for (int l = 0; l < P; l++) begin
      lane_ok[l] = (pos + CW'(l)) < nv;
      lane_gt[l] = lane_ok[l] && cmp_gt[l];
      lane_eq[l] = lane_ok[l] && cmp_eq[l];
      // Ties at the threshold go to the lowest columns: this lane's tie is kept if fewer
      // than k - gt ties came before it (earlier chunks and lanes).
      lane_sel[l] = lane_gt[l] || (lane_eq[l] && (eqseen + n_eq) < (kk - gt));
      sel_before[l] = n_sel;
      for (int m = 0; m < NC; m++) n_ge[m] = n_ge[m] + CW'(lane_ok[l] && cmp_ge[l][m]);
      n_eq = n_eq + CW'(lane_eq[l]);
      n_sel = n_sel + CW'(lane_sel[l]);
      if (lane_sel[l]) begin
        imp_chunk = imp_chunk + ((cfg_imp_pos && smem[IW'(pos + CW'(l))] < 0) ? 64'sd0
                                 : 64'(smem[IW'(pos + CW'(l))]));
      end
    end
  end

  // End of a search pass: the digit is the largest whose candidate at least k scores reach
  // (counts fall with the digit); `above` keeps the count of the candidate just above it,
  // which after the last digit is the count above the threshold.
  logic [CW-1:0] tot [0:NC-1];
  logic [R-1:0]  digit;
  logic [CW-1:0] above_next;
  always_comb begin
    digit = '0;
    for (int m = 0; m < NC; m++) begin
      tot[m] = cnt[m] + n_ge[m];
      if (tot[m] >= kk) digit = R'(m + 1);
    end
    above_next = above;
    for (int m = 0; m < NC; m++) begin
      if (R'(m) == digit) above_next = tot[m];
    end
  end

  // Fraction-engine lanes.
  logic signed [AW-1:0] f_val [0:KF-1];
  logic signed [AW-1:0] f_max;
  for (genvar l = 0; l < KF; l++) begin : g_frac
    hdpa_frac_lane #(.D(D), .F(F)) lane (
        .q(qrow), .k(kmem[klist[laddr(row[IW-1:0], IW'(pos + CW'(l)))]]), .a(f_val[l]));
  end
  always_comb begin
    f_max = {1'b1, {(AW-1){1'b0}}};
    for (int l = 0; l < KF; l++) begin
      if ((pos + CW'(l)) < kn && f_val[l] > f_max) f_max = f_val[l];
    end
  end

  // Softmax lanes.
  logic [16:0]   e_val [0:E-1];
  logic [ZW-1:0] e_sum;
  for (genvar l = 0; l < E; l++) begin : g_exp
    hdpa_exp_unit unit (
        .x((AW+1)'(amax) - (AW+1)'(amem[IW'(pos + CW'(l))])), .c(cfg_c), .e(e_val[l]));
  end
  always_comb begin
    e_sum = '0;
    for (int l = 0; l < E; l++) begin
      if ((pos + CW'(l)) < kn) e_sum = e_sum + ZW'(e_val[l]);
    end
  end

  // S.V lanes: acc_d + sum over this cycle's kept keys of e_j v_jd.
  logic signed [ACCW-1:0] acc_next [0:D-1];
  logic [D*26-1:0] sv_prod [0:KS-1];
  for (genvar l = 0; l < KS; l++) begin : g_sv
    hdpa_sv_lane #(.D(D)) lane (
        .e(emem[IW'(pos + CW'(l))]), .v(vmem[klist[laddr(row[IW-1:0], IW'(pos + CW'(l)))]]),
        .p(sv_prod[l]));
  end
  always_comb begin
    for (int i = 0; i < D; i++) begin
      acc_next[i] = acc[i];
      for (int l = 0; l < KS; l++) begin
        if ((pos + CW'(l)) < kn) acc_next[i] = acc_next[i] + ACCW'($signed(sv_prod[l][i*26+:26]));
      end
    end
  end

  // Normalization lanes: dimensions npos + l of the row, NL per cycle, gathered in obuf.
  localparam int DW = $clog2(D) + 1;
  logic [DW-1:0]      npos;
  logic signed [ACCW-1:0] nacc [0:NL-1];
  logic [15:0]        nval [0:NL-1];
  logic [D*16-1:0]    obuf, obuf_next;
  for (genvar l = 0; l < NL; l++) begin : g_norm
    hdpa_norm_lane lane (.acc(nacc[l]), .r(div_q), .out(nval[l]));
  end
  always_comb begin
    for (int l = 0; l < NL; l++) begin
      nacc[l] = '0;
      for (int i = 0; i < D; i++) begin
        if (DW'(i) == npos + DW'(l)) nacc[l] = acc[i];
      end
    end
  end
  always_comb begin
    obuf_next = obuf;
    for (int l = 0; l < NL; l++) begin
      for (int i = 0; i < D; i++) begin
        if (DW'(i) == npos + DW'(l)) obuf_next[i*16+:16] = nval[l];
      end
    end
  end

  // Divider step: restoring division of 2^40 by zsum.
  logic [ZW-1:0] div_rem_next;
  logic          div_take;
  hdpa_div_step #(.ZW(ZW)) div_step (
      .rem(div_rem), .bit_in(div_i == 6'd40), .z(zsum), .rem_next(div_rem_next), .take(div_take));

  // ---------------------------------------------------------------- sequential
  logic last_int, last_pr, last_frac, last_exp, last_sv, last_norm;
  always_comb begin
    last_int = pos + CW'(KI) >= nv;
    last_pr = pos + CW'(P) >= nv;
    last_frac = pos + CW'(KF) >= kn;
    last_exp = pos + CW'(E) >= kn;
    last_sv = pos + CW'(KS) >= kn;
    last_norm = npos + DW'(NL) >= DW'(D);
  end

  assign busy = state != S_IDLE;

  always_ff @(posedge clk) begin
    // loads
    if (ld_en) begin
      case (ld_sel)
        2'd0: qmem[ld_row] <= ld_data;
        2'd1: kmem[ld_row] <= ld_data;
        default: vmem[ld_row] <= ld_data;
      endcase
    end
    if (kc_en) kcmem[kc_row] <= kc_data;

    // the integer engine
    if (state == S_INT) begin
      for (int l = 0; l < KI; l++) begin
        if ((pos + CW'(l)) < nv) smem[IW'(pos + CW'(l))] <= s_val[l];
      end
    end
    // the pruning unit's emitting pass
    if (state == S_EMIT) begin
      for (int l = 0; l < P; l++) begin
        if (lane_sel[l]) klist[laddr(row[IW-1:0], IW'(kept_n + sel_before[l]))] <= IW'(pos + CW'(l));
      end
    end
    // the fraction engine
    if (state == S_FRAC) begin
      for (int l = 0; l < KF; l++) begin
        if ((pos + CW'(l)) < kn) amem[IW'(pos + CW'(l))] <= f_val[l];
      end
    end
    // the softmax unit
    if (state == S_EXP) begin
      for (int l = 0; l < E; l++) begin
        if ((pos + CW'(l)) < kn) emem[IW'(pos + CW'(l))] <= e_val[l];
      end
    end
    if (state == S_NORM) begin
      obuf <= obuf_next;
      if (last_norm) omem[row[IW-1:0]] <= obuf_next;
    end
  end

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      state <= S_IDLE;
      done <= 1'b0;
      head_pruned <= 1'b0;
      importance <= '0;
      row <= '0; pos <= '0; npos <= '0; bitpos <= '0; thr <= '0; above <= '0; gt <= '0;
      for (int m = 0; m < NC; m++) cnt[m] <= '0;
      eqseen <= '0; kept_n <= '0; amax <= '0; zsum <= '0;
      div_rem <= '0; div_q <= '0; div_i <= '0; sv_done <= 1'b0; div_done <= 1'b0;
      for (int i = 0; i < D; i++) acc[i] <= '0;
      cyc_int <= '0; cyc_prune <= '0; cyc_frac <= '0; cyc_exp <= '0;
      cyc_svdiv <= '0; cyc_norm <= '0; cyc_a <= '0; cyc_b <= '0;
    end else begin
      done <= 1'b0;
      case (state)
        S_INT, S_SEARCH, S_EMIT: cyc_a <= cyc_a + 1;
        S_FRAC, S_EXP, S_SVDIV, S_NORM: cyc_b <= cyc_b + 1;
        default: ;
      endcase
      case (state)
        S_INT: cyc_int <= cyc_int + 1;
        S_SEARCH, S_EMIT: cyc_prune <= cyc_prune + 1;
        S_FRAC: cyc_frac <= cyc_frac + 1;
        S_EXP: cyc_exp <= cyc_exp + 1;
        S_SVDIV: cyc_svdiv <= cyc_svdiv + 1;
        S_NORM: cyc_norm <= cyc_norm + 1;
        default: ;
      endcase
      case (state)
        S_IDLE: begin
          if (start_a) begin
            state <= S_INT;
            row <= '0; pos <= '0;
            importance <= '0;
            head_pruned <= 1'b0;
            cyc_int <= '0; cyc_prune <= '0; cyc_frac <= '0; cyc_exp <= '0;
            cyc_svdiv <= '0; cyc_norm <= '0; cyc_a <= '0; cyc_b <= '0;
          end else if (start_b) begin
            cyc_frac <= '0; cyc_exp <= '0; cyc_svdiv <= '0; cyc_norm <= '0; cyc_b <= '0;
            head_pruned <= prune_head;
            row <= '0; pos <= '0;
            if (prune_head) done <= 1'b1;
            else state <= S_FRAC;
          end
        end
        S_INT: begin
          if (last_int) begin
            pos <= '0; thr <= '0; above <= '0; gt <= '0; eqseen <= '0; kept_n <= '0;
            for (int m = 0; m < NC; m++) cnt[m] <= '0;
            bitpos <= 5'(SW - R);
            // A row that keeps every key only emits (threshold 0 is below every score).
            state <= (kk >= nv) ? S_EMIT : S_SEARCH;
          end else pos <= pos + CW'(KI);
        end
        S_SEARCH: begin
          if (last_pr) begin
            pos <= '0;
            for (int m = 0; m < NC; m++) cnt[m] <= '0;
            thr <= thr | (SW'(digit) << bitpos);
            above <= above_next;
            if (bitpos == 5'd0) begin
              gt <= above_next;
              state <= S_EMIT;
            end else bitpos <= bitpos - 5'(R);
          end else begin
            pos <= pos + CW'(P);
            for (int m = 0; m < NC; m++) cnt[m] <= tot[m];
          end
        end
        S_EMIT: begin
          importance <= importance + imp_chunk;
          eqseen <= eqseen + n_eq;
          kept_n <= kept_n + n_sel;
          if (last_pr) begin
            kcnt[row[IW-1:0]] <= kept_n + n_sel;
            pos <= '0;
            if (row + 1'b1 < cfg_n) begin
              row <= row + 1'b1;
              state <= S_INT;
            end else begin
              state <= S_IDLE;
              done <= 1'b1;
            end
          end else pos <= pos + CW'(P);
        end
        S_FRAC: begin
          amax <= (pos == '0 || f_max > amax) ? f_max : amax;
          if (last_frac) begin
            pos <= '0;
            zsum <= '0;
            state <= S_EXP;
          end else pos <= pos + CW'(KF);
        end
        S_EXP: begin
          zsum <= zsum + e_sum;
          if (last_exp) begin
            pos <= '0;
            div_rem <= '0; div_q <= '0; div_i <= 6'd40;
            sv_done <= 1'b0; div_done <= 1'b0;
            state <= S_SVDIV;
          end else pos <= pos + CW'(E);
        end
        S_SVDIV: begin
          if (!sv_done) begin
            for (int i = 0; i < D; i++) acc[i] <= acc_next[i];
            pos <= pos + CW'(KS);
            if (last_sv) sv_done <= 1'b1;
          end
          if (!div_done) begin
            div_rem <= div_rem_next;
            div_q <= {div_q[QW-2:0], div_take};
            div_i <= div_i - 6'd1;
            if (div_i == 6'd0) div_done <= 1'b1;
          end
          if ((sv_done || last_sv) && (div_done || div_i == 6'd0)) begin
            npos <= '0;
            state <= S_NORM;
          end
        end
        S_NORM: begin
          if (last_norm) begin
            for (int i = 0; i < D; i++) acc[i] <= '0;
            pos <= '0;
            if (row + 1'b1 < cfg_n) begin
              row <= row + 1'b1;
              state <= S_FRAC;
            end else begin
              state <= S_IDLE;
              done <= 1'b1;
            end
          end else npos <= npos + DW'(NL);
        end
        default: state <= S_IDLE;
      endcase
    end
  end

  // ---------------------------------------------------------------- read port
  always_comb begin
    rd_out = head_pruned ? '0 : omem[rd_row];
    rd_kcnt = kcnt[rd_row];
    rd_kept = klist[laddr(rd_row, rd_idx)];
  end
endmodule
