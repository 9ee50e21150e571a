"""The three UGE losses (METHOD.md, Eqs. 4-11) as pure functions of tensors and fixed networks.

Nothing here owns state or optimisers: the caller decides which networks are frozen, which checkpoint is sampled
and how the losses are weighted. Every loss is differentiable w.r.t. the protected inputs ``x_u`` (or, for L_fd,
their features), which is the only thing the generator learns from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from uge_hf.errors import UgeError

DEFAULT_MARGIN = 2.0
"""Recommended triplet margin alpha of L_fd.

For unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``, so ``alpha = 2`` means "push the protected image's feature until
it is no longer positively aligned with its true class (cos <= 0)". Clean CLIP image-text cosines are about
0.2-0.35 (distance 1.3-1.6) and surrogate prototype cosines higher still, so with alpha = 2 the hinge starts active
for every sample, gives a gradient from the first step, and switches off at a scale-free, meaningful point. A larger
alpha could never be satisfied without moving to the opposite pole; a smaller one (e.g. 1) would already be met by
most clean images and the term would do nothing.
"""

DEFAULT_OMEGA = 0.1
"""Recommended weight omega of the KL term in L_ud.

KL(p_authorized || p_hacker) is unbounded (it grows with the hacker's logit scale wherever it disagrees), whereas
the cross-entropy term is what keeps x_u correctly classified by the authorized network. A trained network against
a random hacker already gives a KL of the order of log K, comparable to or larger than the CE near convergence, so
a small omega keeps the CE dominant (the data stays learnable by the authorized network) while still rewarding
disagreement; omega near 1 lets the generator lower L_ud indefinitely by hurting the authorized prediction.
"""


def gradient_matching_loss(model: nn.Module, state: dict[str, Tensor], x: Tensor, x_u: Tensor, y: Tensor) -> Tensor:
    """L_gm (Eqs. 5-6): how differently ``model`` at checkpoint ``state`` learns from ``x_u`` than from ``x``.

    The network is evaluated functionally at ``state`` (a full state_dict, on the inputs' device) in train mode, so
    BatchNorm uses batch statistics as it does during the authorized training. Cross-entropy gradients w.r.t. every
    trainable floating-point parameter are taken on the clean batch (detached: a fixed target) and on the protected
    batch (with ``create_graph`` so the loss backpropagates into ``x_u``). The distance is ``1 - cos`` between the
    flattened gradients of each parameter tensor, averaged over tensors (dataset-condensation practice), so the
    result lies in [0, 2] and is 0 when ``x_u == x``. ``x`` and ``x_u`` are already normalised network inputs.

    ``state`` is never modified: parameters are detached aliases and buffers (BatchNorm running statistics) are
    cloned for each forward pass, so the running-stat updates of train mode land on throwaway copies.
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
    if not trainable:
        raise UgeError("gradient matching needs a network with trainable parameters; this one has none")
    params = {n: state[n].detach().requires_grad_(True) for n in trainable}
    frozen = {n: t.detach() for n, t in state.items() if n not in params}
    buffer_names = {n for n, _ in model.named_buffers()}

    def gradients(inputs: Tensor, create_graph: bool) -> tuple[Tensor | None, ...]:
        tensors = {n: (t.clone() if n in buffer_names else t) for n, t in frozen.items()}
        tensors.update(params)
        loss = F.cross_entropy(functional_call(model, tensors, (inputs,)), y)
        # A parameter the loss does not use (e.g. a head for another task) has no gradient: it is skipped below.
        return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)

    was_training = model.training
    model.train()
    try:
        clean = gradients(x.detach(), create_graph=False)
        protected = gradients(x_u, create_graph=True)
    finally:
        model.train(was_training)

    distances = [
        1 - F.cosine_similarity(g.flatten(), g_u.flatten(), dim=0, eps=1e-12)
        for g, g_u in zip(clean, protected)
        if g is not None and g_u is not None
    ]
    return torch.stack(distances).mean()


def least_similar_class(clean_features: Tensor, class_embeddings: Tensor, labels: Tensor) -> Tensor:
    """For each sample, the class ``c != y`` whose embedding is least cosine-similar to its clean feature.

    This is F'_t of Eq. 9, the triplet target; it depends only on clean data, so compute it once per dataset.
    """
    if class_embeddings.shape[0] < 2:
        raise UgeError("the feature-deviation loss needs at least two classes to pick a target class")
    similarity = F.normalize(clean_features, dim=-1) @ F.normalize(class_embeddings, dim=-1).T
    # The true class must never be chosen, however dissimilar it happens to be.
    similarity = similarity.scatter(1, labels.view(-1, 1).long(), float("inf"))
    return similarity.argmin(dim=1)


def feature_deviation_loss(
    clean_features: Tensor,
    protected_features: Tensor,
    true_class_embeddings: Tensor,
    target_class_embeddings: Tensor,
    margin: float,
) -> Tensor:
    """L_fd (Eqs. 7-9): push x_u's features away from x's and from the true class, toward the target class.

    All four inputs are B x D raw features, L2-normalised here. Per sample,
    ``l_feat = -||F - F'||^2`` and ``l_tri = ||F' - F'_t||^2 + max(0, margin - ||F' - F_t||^2)``;
    the result is the batch mean of ``l_feat + l_tri``. See ``DEFAULT_MARGIN`` for the recommended margin.
    """
    clean = F.normalize(clean_features, dim=-1)
    protected = F.normalize(protected_features, dim=-1)
    true_class = F.normalize(true_class_embeddings, dim=-1)
    target = F.normalize(target_class_embeddings, dim=-1)

    l_feat = -(clean - protected).pow(2).sum(dim=-1)
    l_tri = (protected - target).pow(2).sum(dim=-1) + F.relu(margin - (protected - true_class).pow(2).sum(dim=-1))
    return (l_feat + l_tri).mean()


def undistill_loss(authorized_logits: Tensor, hacker_logits: Tensor, labels: Tensor, omega: float) -> Tensor:
    """L_ud (Eq. 11): ``CE(authorized, y) - omega * KL(p_authorized || p_hacker)``, both batch means.

    The networks producing the logits are held fixed by the caller; gradients reach the generator only through
    x_u. See ``DEFAULT_OMEGA`` for the recommended weight.
    """
    log_p_authorized = F.log_softmax(authorized_logits, dim=-1)
    log_p_hacker = F.log_softmax(hacker_logits, dim=-1)
    kl = F.kl_div(log_p_hacker, log_p_authorized, reduction="batchmean", log_target=True)
    return F.cross_entropy(authorized_logits, labels) - omega * kl
