"""Fixes to Bochs 3.0 that the emulated Sapphire Rapids (scripts/emu/sapphire.sh) needs to run
this project's kernels as the real CPU would. The first was found by Linux failing to boot
with AMX, the others by kernel tests failing under the emulator, each then pinned on Bochs by
a check of the one instruction against the Intel SDM's definition:

1. XFD (extended feature disable). Linux enables AMX only where CPUID.(EAX=0DH,ECX=1):EAX[4]
   reports XFD; without it the kernel's XCR0 write faults at boot. Added: the CPUID bits (leaf
   0DH sub-leaf 1 EAX[4], and ECX[2] of the TILEDATA sub-leaf), the IA32_XFD and IA32_XFD_ERR
   MSRs, and the #NM that an AMX instruction raises while XFD[18] is set (recording bit 18 in
   IA32_XFD_ERR), which is how Linux grants the tile state on first use.
2. VCVTNE2PS2BF16 took the upper half of the result from elements 16..31 of the first source
   (past its end) instead of elements 0..15.
3. TDPBSSD/TDPBSUD/TDPBUSD read their signed bytes as unsigned (no sign extension).
4. VDPBF16PS's memory operand was declared a scalar dword, so an EVEX compressed displacement
   (disp8 * N) was scaled by 4 instead of by the vector length (N = 64 for 512 bits): a folded
   load from [base + 64] read [base + 4].
5. XSAVE and STTILECFG wrote each tile's row count where its bytes per row go and the other
   way round, so the tile configuration that XRSTOR brought back after a context switch was
   invalid and the next tile instruction raised #UD (SIGILL in the guest's threads).

Usage: python3 bochs_fixes.py BOCHS_SOURCE_DIR
"""

import sys
from pathlib import Path

FIXES = [
    # 1. XFD
    ("cpu/cpu.h",
     "  Bit64u ia32_xss;\n#endif",
     "  Bit64u ia32_xss;\n  Bit64u ia32_xfd, ia32_xfd_err;\n#endif"),
    ("cpu/init.cc",
     "  BX_CPU_THIS_PTR msr.ia32_xss = 0;\n",
     "  BX_CPU_THIS_PTR msr.ia32_xss = 0;\n"
     "  BX_CPU_THIS_PTR msr.ia32_xfd = 0;\n"
     "  BX_CPU_THIS_PTR msr.ia32_xfd_err = 0;\n"),
    ("cpu/msr.cc",
     "#if BX_CPU_LEVEL >= 6\n    case BX_MSR_XSS:\n      if (! is_cpu_extension_supported(BX_ISA_XSAVES)) {",
     "#if BX_CPU_LEVEL >= 6\n"
     "    case BX_MSR_IA32_XFD:\n      val64 = BX_CPU_THIS_PTR msr.ia32_xfd;\n      break;\n"
     "    case BX_MSR_IA32_XFD_ERROR:\n      val64 = BX_CPU_THIS_PTR msr.ia32_xfd_err;\n      break;\n"
     "    case BX_MSR_XSS:\n      if (! is_cpu_extension_supported(BX_ISA_XSAVES)) {"),
    ("cpu/msr.cc",
     "#if BX_CPU_LEVEL >= 6\n    case BX_MSR_XSS:\n      {",
     "#if BX_CPU_LEVEL >= 6\n"
     "    case BX_MSR_IA32_XFD:\n"
     "      BX_CPU_THIS_PTR msr.ia32_xfd = val_64 & BX_XCR0_XTILEDATA_MASK;\n"
     "      handleAvxModeChange();\n      break;\n"
     "    case BX_MSR_IA32_XFD_ERROR:\n"
     "      BX_CPU_THIS_PTR msr.ia32_xfd_err = val_64 & BX_XCR0_XTILEDATA_MASK;\n      break;\n"
     "    case BX_MSR_XSS:\n      {"),
    ("cpu/proc_ctrl.cc",
     "      (~BX_CPU_THIS_PTR xcr0.val32 & (BX_XCR0_XTILECFG_MASK | BX_XCR0_XTILEDATA_MASK)) != 0)\n"
     "    clear_amx_ok();",
     "      (~BX_CPU_THIS_PTR xcr0.val32 & (BX_XCR0_XTILECFG_MASK | BX_XCR0_XTILEDATA_MASK)) != 0 ||\n"
     "      (BX_CPU_THIS_PTR msr.ia32_xfd & BX_XCR0_XTILEDATA_MASK) != 0)\n"
     "    clear_amx_ok();"),
    ("cpu/proc_ctrl.cc",
     "    exception(BX_UD_EXCEPTION, 0);\n\n  BX_ASSERT(0);\n\n  BX_NEXT_TRACE(i); // keep compiler happy\n}\n#endif",
     "    exception(BX_UD_EXCEPTION, 0);\n\n"
     "  if (BX_CPU_THIS_PTR msr.ia32_xfd & BX_XCR0_XTILEDATA_MASK) {\n"
     "    BX_CPU_THIS_PTR msr.ia32_xfd_err = BX_XCR0_XTILEDATA_MASK;\n"
     "    exception(BX_NM_EXCEPTION, 0);\n  }\n\n"
     "  BX_ASSERT(0);\n\n  BX_NEXT_TRACE(i); // keep compiler happy\n}\n#endif"),
    ("cpu/cpuid.cc",
     "    if (is_cpu_extension_supported(BX_ISA_XSAVES))\n      leaf->eax |= (1<<3);\n",
     "    if (is_cpu_extension_supported(BX_ISA_XSAVES))\n      leaf->eax |= (1<<3);\n"
     "    if (is_cpu_extension_supported(BX_ISA_AMX))\n      leaf->eax |= (1<<4); // XFD\n"),
    ("cpu/cpuid.cc",
     "      leaf->ecx = (cpu->ia32_xss_suppmask & (1 << subfunction)) != 0;\n",
     "      leaf->ecx = (cpu->ia32_xss_suppmask & (1 << subfunction)) != 0;\n"
     "      if (subfunction == xcr0_t::BX_XCR0_XTILEDATA_BIT)\n"
     "        leaf->ecx |= (1<<2); // XFD applies to this component\n"),
    # 2. VCVTNE2PS2BF16's upper half
    ("cpu/avx/avx512_bf16.cc",
     "    dst.vmm16u(n) = convert_ne_fp32_to_bfloat16(op1.vmm32u(n));",
     "    dst.vmm16u(n) = convert_ne_fp32_to_bfloat16(op1.vmm32u(n - DWORD_ELEMENTS(len)));"),
    # 5. The tile configuration as XSAVE and STTILECFG write it (colsb words at 16, rows at 48)
    ("cpu/xsave.cc",
     "      tilecfg.vmm16u(8+n)    = BX_CPU_THIS_PTR amx->tilecfg[n].rows;\n"
     "      tilecfg.vmmubyte(48+n) = BX_CPU_THIS_PTR amx->tilecfg[n].bytes_per_row;\n",
     "      tilecfg.vmm16u(8+n)    = BX_CPU_THIS_PTR amx->tilecfg[n].bytes_per_row;\n"
     "      tilecfg.vmmubyte(48+n) = BX_CPU_THIS_PTR amx->tilecfg[n].rows;\n"),
    # 4. VDPBF16PS's memory operand is a full vector (disp8 * 64 at 512 bits)
    ("cpu/decoder/ia_opcodes_evex.def",
     "BX_ISA_AVX512_BF16, OP_Vps, OP_Hdq, OP_mVdq32,",
     "BX_ISA_AVX512_BF16, OP_Vps, OP_Hdq, OP_mVdq,"),
]

# 3. Signed bytes of the AMX-INT8 dot products: (function, sign-extend x, sign-extend y).
SIGNED = [("DPBDSS", True, True), ("DPBDSU", True, False), ("DPBDUS", False, True)]


def main() -> None:
    src = Path(sys.argv[1])
    for rel, old, new in FIXES:
        path = src / rel
        text = path.read_text()
        if text.count(old) != 1:
            sys.exit(f"bochs_fixes: {rel}: the text to fix occurs {text.count(old)} times, not once")
        path.write_text(text.replace(old, new))
    path = src / "cpu/avx/amx.cc"
    text = path.read_text()
    for fn, xs, ys in SIGNED:
        start = text.index(f"BX_CPP_INLINE Bit32u {fn}(")
        end = text.index("return p0dword", start)
        body = text[start:end]
        for j in range(4):
            for on, v in ((xs, "xbyte"), (ys, "ybyte")):
                if on:
                    old = f"Bit32s({v}[{j}])"
                    if body.count(old) != 1:
                        sys.exit(f"bochs_fixes: amx.cc {fn}: {old} occurs {body.count(old)} times, not once")
                    body = body.replace(old, f"Bit32s(Bit8s({v}[{j}]))")
        text = text[:start] + body + text[end:]
    path.write_text(text)
    print(f"bochs_fixes: the five fixes applied to {src} ({len(FIXES) + len(SIGNED)} edits)")


if __name__ == "__main__":
    main()
