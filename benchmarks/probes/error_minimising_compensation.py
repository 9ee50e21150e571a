"""Probe C: replay (closed loop: nets train on x_u) with delta init = class-wise block pattern (10 levels);
each step: g = unit(grad L_gm(auth @ its replayed state)) + mu * unit(grad CE(hacker surrogate @ its replayed state, x_u)),
one sign step; the surrogate hacker (another seed) trains on x_u alongside (error-minimising, Huang et al. 2021).

    python benchmarks/probes/error_minimising_compensation.py
"""
import argparse, json, torch, torch.nn.functional as F
from common import *
from uge_hf.training import augment, recipe_optimizer, epoch_permutation, normalize, to_unit
from uge_hf.losses import gradient_matching_loss
p = argparse.ArgumentParser()
p.add_argument("--mu", type=float, default=1.0); p.add_argument("--hacker", default="resnet18-w16-seed100")
p.add_argument("--init", default="block4"); p.add_argument("--rows", type=int, default=5000)
a = p.parse_args()
x, y = rows(0, a.rows); val = rows(8000, 10000)
block4 = class_patterns()["block4"]
rho = 10 / 255
delta = rho * block4[y] if a.init == "block4" else torch.zeros(x.shape)
auth = build_model("resnet18-w16-seed0", 10).train()
func = build_model("resnet18-w16-seed0", 10).train()
hacker = build_model(a.hacker, 10).train()
nets = [auth, hacker]
optims = [recipe_optimizer(n, RECIPE, len(x)) for n in nets]
aug = torch.Generator().manual_seed(RECIPE.seed)
t = time.time()
for epoch in range(RECIPE.epochs):
    logs = []
    for idx in epoch_permutation(len(x), RECIPE.seed, epoch).split(RECIPE.batch_size):
        xb, yb = to_unit(x[idx]), y[idx]
        d = delta[idx].clone().requires_grad_(True)
        r = torch.Generator(); r.set_state(aug.get_state())
        xs, xus = augment([xb, (xb + d).clamp(0, 1)], RECIPE, r)
        state = {n: v.detach().clone() for n, v in auth.state_dict().items()}
        gm = gradient_matching_loss(func, state, normalize(xs), normalize(xus), yb)
        (g_gm,) = torch.autograd.grad(gm, d, retain_graph=True)
        hacker.requires_grad_(False)
        # eval-mode-free: train mode BN on the batch, like its training; running stats drift slightly (throwaway)
        em = F.cross_entropy(hacker(normalize(xus)), yb)
        (g_em,) = torch.autograd.grad(em, d)
        hacker.requires_grad_(True)
        d = (d - rho / 4 * (unit(g_gm) + a.mu * unit(g_em)).sign()).clamp(-rho, rho).detach()
        delta[idx] = d
        (xs,) = augment([(xb + d).clamp(0, 1)], RECIPE, aug)
        for net, (opt, sched) in zip(nets, optims):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(normalize(xs)), yb).backward()
            opt.step(); sched.step()
        logs.append((gm.item(), em.item()))
    print(f"epoch {epoch} gm {sum(l[0] for l in logs)/len(logs):.3f} em {sum(l[1] for l in logs)/len(logs):.3f} {time.time()-t:.0f}s", flush=True)
print("replay auth acc (val)", round(100 * accuracy(auth.eval(), *val), 1), "surrogate hacker", round(100 * accuracy(hacker.eval(), *val), 1))
xu = (to_unit(x) + delta).clamp(0, 1).mul(255).round().to(torch.uint8)
assert (xu.int() - x.int()).abs().max() <= 10
torch.save(xu, OUT / f"xuC_{a.init}_{a.mu}_{a.hacker}.pt")
print(json.dumps(score(xu, y, val, ["resnet18-w16-seed0", "resnet18-w16-seed1", "cnn-w16-seed1"], "C")))
