// The trader page's wallet actions over EIP-1193 (window.ethereum), with viem.
// Flow: "check" asks the server to run the SDK's pre-checks and returns the calls to sign;
// "sign and send" has the wallet sign and send each call, waits for its receipt, then asks
// the server what the transaction did. No key ever reaches the server.
import { createPublicClient, createWalletClient, custom } from "viem";

const $ = (id) => document.getElementById(id);
const section = document.querySelector("[data-testid=actions]");
let pending = null; // the checked calls, until signed

function wallet() {
  if (!window.ethereum) {
    throw new Error("no wallet in this browser (an EIP-1193 provider, window.ethereum)");
  }
  const transport = custom(window.ethereum);
  return {
    wallet: createWalletClient({ transport }),
    reader: createPublicClient({ transport, pollingInterval: 250 }),
  };
}

function show(el, text, ok) {
  el.textContent = text;
  el.className = (el.id === "result" ? "result " : "precheck ") + (ok ? "ok" : "bad");
}

async function check(action) {
  $("sign").hidden = true;
  pending = null;
  show($("precheck"), "checking…", true);
  try {
    const { wallet: w } = wallet();
    const [from] = await w.requestAddresses();
    const chainId = await w.getChainId();
    if (String(chainId) !== section.dataset.chainId) {
      throw new Error(`the wallet is on chain ${chainId}, the deployment on chain ${section.dataset.chainId}`);
    }
    const body = { action, account: section.dataset.account, from };
    if (action === "deposit") body.amount = $("deposit-amount").value;
    else { body.market = $("reduce-market").value; body.size = $("reduce-size").value; }
    const res = await fetch("/api/precheck", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const out = await res.json();
    if (!out.ok) { show($("precheck"), "Refused before signing: " + out.error, false); return; }
    pending = { from, calls: out.calls };
    show($("precheck"), "Pre-checks passed (SDK): " + out.checks.join("; ") +
      `\nRatio after: ${out.ratio_after}${out.cures ? " (back at the call ratio)" : " (still under the call ratio)"}` +
      "\nTo sign: " + out.calls.map((c) => c.label).join(", then "), true);
    $("sign").hidden = false;
  } catch (err) {
    show($("precheck"), "Error: " + (err.shortMessage || err.message), false);
  }
}

async function sign() {
  if (!pending) return;
  $("sign").hidden = true;
  const { wallet: w, reader } = wallet();
  const lines = [];
  try {
    for (const call of pending.calls) {
      const hash = await w.writeContract({
        account: pending.from, chain: null, address: call.to, abi: [call.abi],
        functionName: call.function,
        args: call.args.map((a) => (/^-?\d+$/.test(a) ? BigInt(a) : a)),
      });
      show($("result"), lines.concat(`${call.label}: sent ${hash}, waiting…`).join("\n"), true);
      const receipt = await reader.waitForTransactionReceipt({ hash, timeout: 120000 });
      const res = await (await fetch("/api/tx/" + hash)).json();
      lines.push(`${call.label}: ${receipt.status} in block ${receipt.blockNumber}` +
        (res.events && res.events.length ? " — " + res.events.join("; ") : "") +
        (res.states ? Object.entries(res.states).map(([a, s]) => ` — account now ${s}`).join("") : ""));
      show($("result"), lines.join("\n"), receipt.status === "success");
      if (receipt.status !== "success") return;
    }
  } catch (err) {
    lines.push("Error: " + (err.shortMessage || err.message));
    show($("result"), lines.join("\n"), false);
  } finally {
    pending = null;
  }
}

if (section) {
  $("deposit-cure").onclick = () => {
    const t = document.querySelector("[data-cure-deposit]");
    $("deposit-amount").value = t ? t.dataset.cureDeposit.replace(/,/g, "") : "";
  };
  $("deposit-check").onclick = () => check("deposit");
  $("reduce-check").onclick = () => check("reduce");
  $("close-check").onclick = () => check("close");
  $("sign").onclick = sign;
}
