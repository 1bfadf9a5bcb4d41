// Reference circuits whose 45 nm area the simulator's table takes from Horowitz (ISSCC 2014):
// an 8-bit multiplier (282 um^2) and a 32-bit adder (137 um^2). rtl/synth.sh synthesizes them
// with the core's flow to convert generic cell counts into an area estimate.
module ref_mul8 (
    input  logic signed [7:0]  a,
    input  logic signed [7:0]  b,
    output logic signed [15:0] p
);
  assign p = a * b;
endmodule

module ref_add32 (
    input  logic [31:0] a,
    input  logic [31:0] b,
    output logic [31:0] s
);
  assign s = a + b;
endmodule
