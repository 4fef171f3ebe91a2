// settings.h - the process-wide switches of the CPU kernels, read by the bindings at each
// call and set from Python through the pixelfly._ops module's functions (module.cpp).
#pragma once

namespace pixelfly {

int bsmm_isa();            // PF_ISA_* the bsmm kernels use (PF_ISA_AUTO: the best available)
int attention_isa();       // same for the attention kernels
int attention_bwd_mode();  // 0 auto, 1 one task per (batch, head), 2 row/column tasks

}  // namespace pixelfly
