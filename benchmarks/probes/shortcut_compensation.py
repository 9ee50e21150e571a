"""Probe B: a class-wise shortcut (amp levels) plus a correction eps (--budget levels, default 10 - amp; the sum
kept within rho = 10 levels) optimised by L_gm alone at the authorized net's replayed steps. The replayed net
trains on x_u (closed loop, --closed 1) or on the clean rows (--closed 0). Can the correction hide the shortcut
from the authorized net only?

    python benchmarks/probes/shortcut_compensation.py --pattern block4 --amp 10 --budget 10
    python benchmarks/probes/shortcut_compensation.py --pattern block4 --amp 10 --budget 3
    python benchmarks/probes/shortcut_compensation.py --pattern block4 --amp 10 --budget 3 --contrast resnet18-w16-seed100

--contrast SPEC (probe E) also trains that network on x_u alongside and steps along unit(grad L_gm authorized)
- unit(grad L_gm SPEC): keep the authorized net's gradients, spoil the other's. Without it the step is the sign
of grad L_gm authorized, as in the runs recorded before the option was added.
"""
import argparse, json, torch, torch.nn.functional as F
from common import *
from uge_hf.training import augment, recipe_optimizer, epoch_permutation, normalize, to_unit
from uge_hf.losses import gradient_matching_loss
p = argparse.ArgumentParser()
p.add_argument("--pattern", default="pixel"); p.add_argument("--amp", type=int, default=5)
p.add_argument("--steps", type=int, default=1); p.add_argument("--closed", type=int, default=1)
p.add_argument("--rows", type=int, default=5000); p.add_argument("--budget", type=int, default=None)
p.add_argument("--contrast", default=None)
a = p.parse_args()
x, y = rows(0, a.rows); val = rows(8000, 10000)
pattern = class_patterns()[a.pattern]
base = a.amp / 255 * pattern[y]
budget = (a.budget if a.budget is not None else 10 - a.amp) / 255
rho = 10 / 255
eps = torch.zeros(x.shape)
net = build_model("resnet18-w16-seed0", 10).train()
func = build_model("resnet18-w16-seed0", 10).train()
opt, sched = recipe_optimizer(net, RECIPE, len(x))
trained = [(net, opt, sched)]
if a.contrast:
    other = build_model(a.contrast, 10).train(); other_func = build_model(a.contrast, 10).train()
    trained.append((other, *recipe_optimizer(other, RECIPE, len(x))))
aug = torch.Generator().manual_seed(RECIPE.seed)
t = time.time()
for epoch in range(RECIPE.epochs):
    logs = []
    for idx in epoch_permutation(len(x), RECIPE.seed, epoch).split(RECIPE.batch_size):
        xb, yb = to_unit(x[idx]), y[idx]
        state = {n: v.detach().clone() for n, v in net.state_dict().items()}
        if a.contrast: other_state = {n: v.detach().clone() for n, v in other.state_dict().items()}
        d = eps[idx].clone()
        for k in range(a.steps):
            d.requires_grad_(True)
            r = torch.Generator(); r.set_state(aug.get_state())
            xs, xus = augment([xb, (xb + base[idx] + d).clamp(0, 1)], RECIPE, r)
            loss = gradient_matching_loss(func, state, normalize(xs), normalize(xus), yb)
            if a.contrast:
                other_loss = gradient_matching_loss(other_func, other_state, normalize(xs), normalize(xus), yb)
                g_auth, = torch.autograd.grad(loss, d, retain_graph=True); g_other, = torch.autograd.grad(other_loss, d)
                grad = unit(g_auth) - unit(g_other)
            else:
                (grad,) = torch.autograd.grad(loss, d)
            d = (d - budget / 4 * grad.sign()).clamp(-budget, budget)
            d = ((base[idx] + d).clamp(-rho, rho) - base[idx]).detach()
            if k == 0: logs.append(loss.item())
        eps[idx] = d
        train_x = (xb + base[idx] + d).clamp(0, 1) if a.closed else xb
        (xs,) = augment([train_x], RECIPE, aug)
        for model, optimizer, scheduler in trained:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(normalize(xs)), yb).backward()
            optimizer.step(); scheduler.step()
    print(f"epoch {epoch} gm {sum(logs)/len(logs):.3f} {time.time()-t:.0f}s", flush=True)
print("replay net acc (val)", round(100 * accuracy(net.eval(), *val), 1))
xu = (to_unit(x) + base + eps).clamp(0, 1).mul(255).round().to(torch.uint8)
assert (xu.int() - x.int()).abs().max() <= 10
torch.save(xu, OUT / f"xu_{a.pattern}_{a.amp}_{budget*255:.0f}_{a.steps}_{a.closed}_{a.contrast}.pt")
print(json.dumps(score(xu, y, val, ["resnet18-w16-seed0", "resnet18-w16-seed1", "cnn-w16-seed1"], "B")))
