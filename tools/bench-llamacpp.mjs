#!/usr/bin/env node
// bench-llamacpp.mjs — llama.cpp measured on this machine, for rill's speed
// comparisons (#14 §5: pp512/tg128 per type; #16 §1: a burst's first-token
// latency), in the same sitting as rill.
//
// llama.cpp comes from the npm package node-llama-cpp (pinned below): its
// prebuilt linux-x64 CPU library is built with all of ggml's CPU variants and
// picks the best one for the CPU at load (zen4: AVX-512, VNNI, BF16).  It is
// installed into BUILD/llcpp-node on first use (the only registry reachable
// here besides Debian's is npm, and llama.cpp has no Debian package).  It is
// a library, not llama-server: the burst below is run in-process.
//
//   pp512  one 512-token batch (BOS + random ids, logits of the last row only)
//          on an empty context, as `llama-bench -p 512`: 512 / its seconds.
//   tg128  128 one-token decode steps from an empty context (BOS, then random
//          ids, no sampling), as `llama-bench -n 128`: 128 / their seconds.
//   Both with THREADS threads, F16 KV cache, no flash attention, weights
//   mmap'd; one warm-up of each first.  Repetitions alternate over the files
//   (one pass over all of them a repetition), as rill-bench-engine --vs-llama
//   does; the medians are reported with the range.
//   --rill: after each llama.cpp pass, rill-bench-engine --vs-llama --reps 1
//   on the same files, and a table of both with rill ÷ llama.cpp.
//   --burst N: N sequences of one context submitted at once (the prompt
//   "Once upon a time", greedy, up to --burst-tokens each), as llama-server
//   with N parallel slots batches them; time to each sequence's first token
//   and between tokens, p50/p99.  In-process, so without llama-server's HTTP
//   and JSON: a lower bound of what its server would answer.
//
// Before every timed part it waits up to 3 s for other processes to use under
// a quarter of a core, and records what they used during it (/proc/stat less
// this process), as rill-bench-engine does.
//
// Usage: node tools/bench-llamacpp.mjs [--build DIR] [options] [FILE.gguf ...]
// Without files: BUILD/bench-models/SHAPE-TYPE.gguf for --shapes x --types,
// made with BUILD/rill-mkmodel when missing (the same files as --vs-llama).
// Output: BUILD/bench/llamacpp.json (--json FILE) and a table on stdout.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

// One libuv worker thread: node-llama-cpp runs each llama_decode on a libuv
// pool thread, and with the default 4 of them a 2-thread tg128 step here took
// 16 ms median instead of 3.5 (small-134m Q4_0, idle machine): the decode then
// wanders between pool threads.  llama-bench and llama-server decode from one
// thread, so the measurement does too.  libuv reads this before its first use,
// hence the re-exec.
if (process.env.UV_THREADPOOL_SIZE !== "1") {
    const r = spawnSync(process.execPath, process.argv.slice(1), {
        stdio: "inherit", env: { ...process.env, UV_THREADPOOL_SIZE: "1" },
    });
    process.exit(r.status ?? 1);
}

const NLC_VERSION = "3.21.1"; // newer releases' lock names builds npm does not serve here
const TYPES = ["f16", "q8_0", "q6_K", "q5_K_M", "q4_K_M", "q4_0"];
const SHAPES = ["small-134m", "llama3-1b"];

function usage(code) {
    (code ? process.stderr : process.stdout).write(`usage: node tools/bench-llamacpp.mjs [options] [FILE.gguf ...]
  --build DIR          build dir (default build): models in DIR/bench-models, npm package in
                       DIR/llcpp-node, JSON in DIR/bench/llamacpp.json
  --shapes LIST        without files: small-134m,llama3-1b (default small-134m)
  --types LIST         without files: ${TYPES.join(",")} (default all)
  --threads N          (default 2, as ANCHORS.md)
  --reps N             repetitions, alternated over the files (default 3)
  --pp N --tg N        prompt and decode lengths (default 512, 128)
  --wait-quiet S        before each timed part, wait up to S s for others under 1/4 core (default 3)
  --rill               also rill-bench-engine --vs-llama --reps 1 after each pass, and a joint table
  --burst N            also a burst of N sequences at once (0: none, the default)
  --burst-file FILE    its model (default DIR/bench-models/small-134m-f32.gguf, as make bench-ttft)
  --burst-tokens N     tokens a sequence (default 64)   --burst-reps N (default 3)
  --burst-only         no pp/tg
  --json FILE          where the JSON goes
`);
    process.exit(code);
}

// ---- options ---------------------------------------------------------------------------------
const o = {
    build: "build", shapes: ["small-134m"], types: TYPES, threads: 2, reps: 3, pp: 512, tg: 128,
    rill: false, waitQuiet: 3, burst: 0, burstFile: null, burstTokens: 64, burstReps: 3, burstOnly: false, json: null, files: [],
};
{
    const a = process.argv.slice(2);
    const num = (i, lo) => {
        const v = Number(a[i]);
        if (!Number.isInteger(v) || v < lo) {
            console.error(`bench-llamacpp: ${a[i - 1]} takes an integer >= ${lo}`);
            process.exit(2);
        }
        return v;
    };
    for (let i = 0; i < a.length; i++) {
        switch (a[i]) {
        case "--build": o.build = a[++i]; break;
        case "--shapes": o.shapes = a[++i].split(","); break;
        case "--types": o.types = a[++i].split(","); break;
        case "--threads": o.threads = num(++i, 1); break;
        case "--reps": o.reps = num(++i, 1); break;
        case "--pp": o.pp = num(++i, 1); break;
        case "--tg": o.tg = num(++i, 1); break;
        case "--rill": o.rill = true; break;
        case "--wait-quiet": o.waitQuiet = num(++i, 0); break;
        case "--burst": o.burst = num(++i, 0); break;
        case "--burst-file": o.burstFile = a[++i]; break;
        case "--burst-tokens": o.burstTokens = num(++i, 1); break;
        case "--burst-reps": o.burstReps = num(++i, 1); break;
        case "--burst-only": o.burstOnly = true; break;
        case "--json": o.json = a[++i]; break;
        case "-h": case "--help": usage(0); break;
        default:
            if (a[i].startsWith("-")) {
                console.error(`bench-llamacpp: unknown option ${a[i]}`);
                usage(2);
            }
            o.files.push(a[i]);
        }
    }
    for (const s of o.shapes) if (!SHAPES.includes(s)) { console.error(`bench-llamacpp: --shapes takes ${SHAPES}`); process.exit(2); }
    for (const t of o.types) if (!TYPES.includes(t)) { console.error(`bench-llamacpp: --types takes ${TYPES}`); process.exit(2); }
    if (o.rill && o.files.length) {
        console.error("bench-llamacpp: --rill takes --shapes/--types (rill-bench-engine's files), not file names");
        process.exit(2);
    }
}
const B = path.resolve(o.build);
const modelsDir = path.join(B, "bench-models");
const jsonPath = o.json ? path.resolve(o.json) : path.join(B, "bench", "llamacpp.json");

// ---- the package ------------------------------------------------------------------------------
// Only the CPU prebuilt: node-llama-cpp's other optional builds (CUDA, Vulkan,
// ARM) are 700 MB that nothing here uses.  --ignore-scripts: its postinstall
// would try to download or compile a llama.cpp when the prebuilt does not fit,
// which cannot work here; a missing prebuilt should fail loudly instead.
async function loadPackage() {
    const dir = path.join(B, "llcpp-node");
    const entry = path.join(dir, "node_modules", "node-llama-cpp", "dist", "index.js");
    const pin = path.join(dir, "node_modules", "node-llama-cpp", "package.json");
    const have = fs.existsSync(pin) && JSON.parse(fs.readFileSync(pin, "utf8")).version === NLC_VERSION;
    if (!have) {
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({
            name: "rill-llcpp-bench", private: true, type: "module",
            dependencies: { "node-llama-cpp": NLC_VERSION, "@node-llama-cpp/linux-x64": NLC_VERSION },
        }, null, 2) + "\n");
        console.error(`bench-llamacpp: installing node-llama-cpp@${NLC_VERSION} into ${dir}`);
        const r = spawnSync("npm", ["install", "--prefix", dir, "--omit=optional", "--ignore-scripts",
                                    "--no-audit", "--no-fund", "--loglevel=error"], { stdio: "inherit" });
        if (r.status !== 0) {
            console.error("bench-llamacpp: npm install failed");
            process.exit(1);
        }
    }
    return import(pathToFileURL(entry).href);
}

// ---- the machine: other processes' CPU, as rill-bench-engine ----------------------------------
const HZ = 100; // USER_HZ: /proc/stat and /proc/self/stat count in it on Linux
function cpuSample() {
    const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0); // user nice system irq softirq steal
    const s = fs.readFileSync("/proc/self/stat", "utf8");
    const g = s.slice(s.lastIndexOf(")") + 2).split(" ");
    const own = Number(g[11]) + Number(g[12]); // utime, stime (every thread of this process)
    return { t: performance.now(), busy, own };
}
// cores other processes used between two samples
function others(a, b) {
    const secs = (b.t - a.t) / 1000;
    if (secs <= 0) return NaN;
    return Math.max(0, ((b.busy - a.busy) - (b.own - a.own)) / HZ / secs);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// wait up to --wait-quiet s (3) for a lull (others under a quarter of a
// core); a machine busy longer is not waited out: the figures then say how
// busy it was
async function quiet() {
    let b = NaN;
    for (let i = 0; i < Math.max(1, 2 * o.waitQuiet); i++) {
        const a = cpuSample();
        await sleep(500);
        b = others(a, cpuSample());
        if (!(b > 0.25)) break;
    }
    return b;
}

const median = (v) => {
    const s = v.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
    if (!s.length) return NaN;
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pct = (v, p) => {
    const s = [...v].sort((x, y) => x - y);
    return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
};
const r1 = (x) => Math.round(x * 10) / 10;
const r2 = (x) => Math.round(x * 100) / 100;

// ---- the files ----------------------------------------------------------------------------------
// rill-bench-engine's vs_corpus: pseudo-random words whose BPE allows
// llama3-1b's 128256 tokens (the same xorshift, so the same file).
function randomWords(file) {
    if (fs.existsSync(file)) return;
    const M = (1n << 64n) - 1n;
    let x = 0x2545f4914f6cdd1dn;
    const step = () => { x ^= (x << 13n) & M; x ^= x >> 7n; x ^= (x << 17n) & M; };
    const out = [];
    for (let w = 0; w < 400000; w++) {
        step();
        const len = 2 + Number(x % 7n);
        let s = "";
        for (let i = 0; i < len; i++) {
            step();
            s += String.fromCharCode(97 + Number(x % 26n));
        }
        out.push(s + " ");
    }
    fs.writeFileSync(file, out.join(""));
}

function makeModel(shape, type) {
    const file = path.join(modelsDir, `${shape}-${type}.gguf`);
    if (fs.existsSync(file)) return file;
    fs.mkdirSync(modelsDir, { recursive: true });
    const mk = path.join(B, "rill-mkmodel");
    const args = shape === "small-134m" ? ["--shape", "134M"]
        : (randomWords(path.join(modelsDir, "random-words.txt")),
           ["--dim", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--ffn", "8192", "--vocab", "128256",
            "--tied", "--ctx", "4096", "--corpus", path.join(modelsDir, "random-words.txt")]);
    console.error(`making ${file}`);
    const r = spawnSync(mk, [...args, "--mix", type, "--seed", "1", "--out", file], { stdio: ["ignore", "ignore", "inherit"] });
    if (r.status !== 0) {
        console.error(`bench-llamacpp: ${mk} failed for ${shape} ${type} (make B=${o.build} all first?)`);
        process.exit(1);
    }
    return file;
}

let files = o.files.map((f) => ({ path: path.resolve(f), shape: null, type: null }));
if (!files.length && !o.burstOnly)
    for (const s of o.shapes) for (const t of o.types) files.push({ path: makeModel(s, t), shape: s, type: t });
for (const f of files) {
    if (!fs.existsSync(f.path)) { console.error(`bench-llamacpp: no ${f.path}`); process.exit(2); }
    if (!f.shape) {
        const m = path.basename(f.path, ".gguf").match(/^(.*)-([^-]+(?:_[KM]+)?)$/);
        f.shape = m ? m[1] : path.basename(f.path, ".gguf");
        f.type = m ? m[2] : "?";
    }
}
let burstFile = null;
if (o.burst) {
    burstFile = o.burstFile ? path.resolve(o.burstFile) : null;
    if (!burstFile) burstFile = makeModel("small-134m", "f32");
}

// ---- llama.cpp ------------------------------------------------------------------------------------
const nlc = await loadPackage();
const llama = await nlc.getLlama({ gpu: false, build: "never", usePrebuiltBinaries: true, logLevel: nlc.LlamaLogLevel.error });
const sysInfo = llama.systemInfo.trim();
const cpuVariant = (() => { // which of ggml's CPU builds was loaded: the widest the CPU runs
    try {
        const maps = fs.readFileSync("/proc/self/maps", "utf8").match(/libggml-cpu-[\w-]+\.so/);
        return maps ? maps[0] : "?";
    } catch { return "?"; }
})();
console.log(`llama.cpp via node-llama-cpp ${NLC_VERSION} (llama.cpp ${llama.llamaCppRelease.release}), ${cpuVariant}`);
console.log(`system_info: ${sysInfo}`);

// xorshift32, so that every run feeds the same token ids
let seed = 1;
const rand = () => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return seed >>> 0; };

async function openFile(file, sequences, ctxPerSeq, batch) {
    const model = await llama.loadModel({ modelPath: file, gpuLayers: 0, useMmap: true });
    const context = await model.createContext({
        contextSize: ctxPerSeq, sequences, batchSize: batch, threads: o.threads, flashAttention: false,
    });
    return { model, context };
}

// pp and tg through the context's own batch calls (what llama-bench's
// llama_decode calls do), not node-llama-cpp's scheduler: no sampling, no
// per-token JavaScript beyond one async call a step.
async function ppOnce(ctx, nVocab, bos, n) {
    const toks = new Uint32Array(n);
    toks[0] = bos;
    for (let i = 1; i < n; i++) toks[i] = rand() % nVocab;
    const t0 = performance.now();
    ctx.initBatch(n);
    ctx.addToBatch(0, 0, toks, Uint32Array.of(n - 1));
    await ctx.decodeBatch();
    const dt = (performance.now() - t0) / 1000;
    ctx.disposeSequence(0);
    return n / dt;
}
async function tgOnce(ctx, nVocab, bos, n) {
    let tok = bos;
    const one = new Uint32Array(1), last = Uint32Array.of(0);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
        one[0] = tok;
        ctx.initBatch(1);
        ctx.addToBatch(0, i, one, last);
        await ctx.decodeBatch();
        tok = rand() % nVocab;
    }
    const dt = (performance.now() - t0) / 1000;
    ctx.disposeSequence(0);
    return n / dt;
}

function runRill(shapes, types, tag) {
    const bin = path.join(B, "rill-bench-engine");
    const out = path.join(B, "bench", `llamacpp-rill-${tag}.json`);
    const r = spawnSync(bin, ["--models-dir", modelsDir, "--vs-llama", "--reps", "1", "--threads", String(o.threads),
                              "--vs-shapes", shapes.join(","), "--vs-dtypes", types.join(","), "--vs-json", out],
                        { stdio: ["ignore", "inherit", "inherit"] });
    if (r.status !== 0 || !fs.existsSync(out)) {
        console.error(`bench-llamacpp: ${bin} failed (make B=${o.build} all first?)`);
        return null;
    }
    return JSON.parse(fs.readFileSync(out, "utf8"));
}

const tStart = performance.now();
const rows = files.map((f) => ({ ...f, pp: [], tg: [], ppOthers: [], tgOthers: [], rillPp: [], rillTg: [], refused: null }));
const rillRuns = [];
if (!o.burstOnly) {
    console.log(`pp${o.pp}/tg${o.tg}, ${o.threads} threads, ${o.reps} repetitions alternated over ${rows.length} files`);
    for (let r = 0; r < o.reps; r++) {
        for (const w of rows) {
            if (w.refused) continue;
            let m;
            const tl = performance.now();
            try {
                m = await openFile(w.path, 1, Math.max(1024, o.pp + o.tg), Math.max(o.pp, 1));
            } catch (e) {
                w.refused = String(e && e.message || e);
                console.log(`  ${w.shape} ${w.type}: llama.cpp refused it: ${w.refused}`);
                continue;
            }
            w.loadS = (performance.now() - tl) / 1000;
            const ctx = m.context._ctx;
            const nVocab = m.model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length || 32000;
            const bos = m.model.tokens.bos ?? 1;
            w.threadsUsed = ctx.getThreads();
            // warm-up, as llama-bench: a short prompt and a few decode steps
            await ppOnce(ctx, nVocab, bos, Math.min(o.pp, 64));
            await tgOnce(ctx, nVocab, bos, 4);
            await quiet();
            let a = cpuSample();
            w.pp.push(await ppOnce(ctx, nVocab, bos, o.pp));
            w.ppOthers.push(others(a, cpuSample()));
            await quiet();
            a = cpuSample();
            w.tg.push(await tgOnce(ctx, nVocab, bos, o.tg));
            w.tgOthers.push(others(a, cpuSample()));
            await m.context.dispose();
            await m.model.dispose();
            console.log(`  ${w.shape.padEnd(10)} ${w.type.padEnd(6)} pp${o.pp} ${w.pp.at(-1).toFixed(1).padStart(7)} tok/s `
                        + `(others ${w.ppOthers.at(-1).toFixed(2)})  tg${o.tg} ${w.tg.at(-1).toFixed(1).padStart(6)} tok/s `
                        + `(others ${w.tgOthers.at(-1).toFixed(2)})  [${w.threadsUsed} threads]`);
        }
        if (o.rill) {
            const j = runRill(o.shapes, o.types, r + 1);
            if (j) {
                rillRuns.push(j);
                for (const x of j.rows) {
                    const w = rows.find((y) => y.shape === x.shape && y.type === x.dtype);
                    if (w) { w.rillPp.push(x.pp512_tokens_per_s); w.rillTg.push(x.tg128_tokens_per_s); }
                }
            }
        }
    }
}

// ---- burst ---------------------------------------------------------------------------------------
let burst = null;
if (o.burst) {
    const runs = [];
    for (let r = 0; r < o.burstReps; r++) {
        const m = await openFile(burstFile, o.burst, 256, 512);
        const prompt = m.model.tokenize("Once upon a time");
        const tokens = m.model.tokens.bos != null && m.model.shouldPrependBosToken ? [m.model.tokens.bos, ...prompt] : prompt;
        const seqs = Array.from({ length: o.burst }, () => m.context.getSequence());
        // warm-up on one sequence, then an empty cache again
        for await (const _ of seqs[0].evaluate(tokens, { temperature: 0 })) break;
        await seqs[0].clearHistory();
        // where the time goes: node-llama-cpp's decode calls (one a batch of
        // every sequence's pending tokens) and its sampling calls (one a token)
        const prof = { decodes: 0, decode_ms: 0, samples: 0, sample_ms: 0, first_token_decode_ms: [] };
        const timed = (f, count, ms) => async (...x) => {
            const s0 = performance.now();
            try { return await f(...x); } finally { prof[count]++; prof[ms] += performance.now() - s0; }
        };
        // the native object's methods are read-only: a proxy in its place
        const cx = m.context._ctx;
        const wrapped = { decodeBatch: timed(cx.decodeBatch.bind(cx), "decodes", "decode_ms"),
                          sampleToken: timed(cx.sampleToken.bind(cx), "samples", "sample_ms") };
        m.context._ctx = new Proxy(cx, {
            get: (t, k) => wrapped[k] ?? (typeof t[k] === "function" ? t[k].bind(t) : t[k]),
        });
        await quiet();
        const a = cpuSample();
        const t0 = performance.now();
        const ttft = [], gaps = [], counts = [];
        await Promise.all(seqs.map(async (s, i) => {
            let n = 0, last = 0;
            for await (const _ of s.evaluate(tokens, { temperature: 0 })) {
                const t = performance.now() - t0;
                if (n === 0) ttft[i] = t; else gaps.push(t - last);
                last = t;
                if (++n >= o.burstTokens) break;
            }
            counts[i] = n;
        }));
        const secs = (performance.now() - t0) / 1000;
        const oth = others(a, cpuSample());
        const total = counts.reduce((x, y) => x + y, 0);
        const run = {
            ttft_p50_ms: r1(pct(ttft, 50)), ttft_p99_ms: r1(pct(ttft, 99)), ttft_max_ms: r1(Math.max(...ttft)),
            inter_token_p50_ms: r1(pct(gaps, 50)), inter_token_p99_ms: r1(pct(gaps, 99)),
            tokens: total, tokens_per_s: r1(total / secs), seconds: r2(secs), others_cores: r2(oth),
            decode_calls: prof.decodes, decode_ms: r1(prof.decode_ms), sample_calls: prof.samples, sample_ms: r1(prof.sample_ms),
        };
        runs.push(run);
        console.log(`burst ${o.burst} (${path.basename(burstFile)}): TTFT p50 ${run.ttft_p50_ms} p99 ${run.ttft_p99_ms} ms, `
                    + `inter-token p50 ${run.inter_token_p50_ms} p99 ${run.inter_token_p99_ms} ms, ${run.tokens_per_s} tok/s, others ${run.others_cores}; `
                    + `${run.decode_calls} decode calls ${run.decode_ms} ms, ${run.sample_calls} sample calls ${run.sample_ms} ms`);
        await m.context.dispose();
        await m.model.dispose();
    }
    const med = (k) => r1(median(runs.map((x) => x[k])));
    burst = {
        file: burstFile, sequences: o.burst, prompt: "Once upon a time", max_tokens: o.burstTokens, runs,
        ttft_p50_ms: med("ttft_p50_ms"), ttft_p99_ms: med("ttft_p99_ms"),
        inter_token_p50_ms: med("inter_token_p50_ms"), inter_token_p99_ms: med("inter_token_p99_ms"),
        tokens_per_s: med("tokens_per_s"),
    };
}

// ---- report ---------------------------------------------------------------------------------------
const out = {
    engine: "llama.cpp", package: `node-llama-cpp@${NLC_VERSION}`, llama_cpp_release: llama.llamaCppRelease.release,
    cpu_variant: cpuVariant, system_info: sysInfo, threads: o.threads, pp: o.pp, tg: o.tg, reps: o.reps,
    seconds: r1((performance.now() - tStart) / 1000),
    rows: rows.map((w) => {
        const x = {
            shape: w.shape, dtype: w.type, file: w.path, reps: w.pp.length,
            pp_tokens_per_s: r2(median(w.pp)), pp_min: r2(Math.min(...w.pp)), pp_max: r2(Math.max(...w.pp)),
            tg_tokens_per_s: r2(median(w.tg)), tg_min: r2(Math.min(...w.tg)), tg_max: r2(Math.max(...w.tg)),
            others_cores_median: r2(median([...w.ppOthers, ...w.tgOthers])),
            others_cores_max: r2(Math.max(...w.ppOthers, ...w.tgOthers)),
        };
        if (w.refused) x.refused = w.refused;
        if (w.rillPp.length) {
            x.rill_reps = w.rillPp.length;
            x.rill_pp_tokens_per_s = r2(median(w.rillPp));
            x.rill_tg_tokens_per_s = r2(median(w.rillTg));
            x.rill_over_llama_pp = Math.round(1000 * x.rill_pp_tokens_per_s / x.pp_tokens_per_s) / 1000;
            x.rill_over_llama_tg = Math.round(1000 * x.rill_tg_tokens_per_s / x.tg_tokens_per_s) / 1000;
        }
        return x;
    }),
};
if (rillRuns.length) out.rill_machine = rillRuns.map((j) => ({ read_gb_per_s: j.read_gb_per_s, fma_peak_gflop_per_s: j.fma_peak_gflop_per_s, kernels: j.kernels }));
if (burst) out.burst = burst;
fs.mkdirSync(path.dirname(jsonPath), { recursive: true });
fs.writeFileSync(jsonPath, JSON.stringify(out, null, 1) + "\n");

if (!o.burstOnly) {
    const rng = (v) => `${Math.min(...v).toFixed(1)}–${Math.max(...v).toFixed(1)}`;
    console.log(`\n| shape | type | llama.cpp pp${o.pp} [range] | llama.cpp tg${o.tg} [range] |`
                + (o.rill ? ` rill pp${o.pp} [range] | rill tg${o.tg} [range] | rill÷llama pp | rill÷llama tg |` : "")
                + " others (cores, median/max) |");
    console.log("|---|---|---:|---:|" + (o.rill ? "---:|---:|---:|---:|" : "") + "---:|");
    for (const w of rows) {
        if (w.refused) { console.log(`| ${w.shape} | ${w.type} | refused: ${w.refused} |`); continue; }
        const x = out.rows.find((y) => y.file === w.path);
        let line = `| ${w.shape} | ${w.type} | ${median(w.pp).toFixed(1)} [${rng(w.pp)}] | ${median(w.tg).toFixed(1)} [${rng(w.tg)}] |`;
        if (o.rill)
            line += w.rillPp.length
                ? ` ${median(w.rillPp).toFixed(1)} [${rng(w.rillPp)}] | ${median(w.rillTg).toFixed(1)} [${rng(w.rillTg)}] | ${x.rill_over_llama_pp.toFixed(2)} | ${x.rill_over_llama_tg.toFixed(2)} |`
                : " – | – | – | – |";
        console.log(line + ` ${x.others_cores_median.toFixed(2)}/${x.others_cores_max.toFixed(2)} |`);
    }
}
console.log(`\n${out.seconds} s in all; JSON in ${jsonPath}`);
process.exit(rows.some((w) => w.refused) ? 1 : 0);
