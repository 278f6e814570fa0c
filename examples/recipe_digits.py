"""Training recipe: the 8×8 digits with the toolkit a PyTorch user reaches for.

Dropout and LayerNorm between the layers, AdamW with weight decay on the weight matrices
only (parameter groups: no decay on biases and norm parameters), a linear warm-up into a
cosine schedule (SequentialLR of LinearLR and CosineAnnealingLR, stepped per batch), label
smoothing, and early stopping on a validation split that restores the best epoch's weights.
Prints the test accuracy. ``python examples/recipe_digits.py``
"""
import time

import fastprop as fp


def split(seed=0):
    """train / validation / test: 60 / 15 / 25 % of the 1,797 digits."""
    X, y = fp.datasets.load_digits()
    X_rest, X_test, y_rest, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=seed)
    X_train, X_val, y_train, y_val = fp.datasets.train_test_split(X_rest, y_rest, test_size=0.2,
                                                                  seed=seed)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)


def param_groups(model, weight_decay):
    """Decay on the weight matrices; none on biases and the norms' scales and shifts (1-D)."""
    decay = [p for p in model.parameters() if len(p.shape) > 1]
    no_decay = [p for p in model.parameters() if len(p.shape) == 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def run(epochs=60, batch_size=32, seed=0, progress=False):
    """Trains the recipe; returns {"accuracy", "epochs_run", "best_epoch", "seconds"}."""
    (X, y), val, (X_test, y_test) = split(seed)
    model = fp.Sequential(
        fp.Linear(64, 256, rng=seed), fp.LayerNorm(256), fp.ReLU(), fp.Dropout(0.2, rng=seed),
        fp.Linear(256, 128, rng=seed + 1), fp.LayerNorm(128), fp.ReLU(), fp.Dropout(0.2, rng=seed + 1),
        fp.Linear(128, 10, rng=seed + 2))
    opt = fp.AdamW(param_groups(model, 1e-2), lr=3e-3)
    steps_per_epoch = -(-len(y) // batch_size)
    warmup = min(3 * steps_per_epoch, epochs * steps_per_epoch // 4)
    sched = fp.lr_scheduler.SequentialLR(opt, [
        fp.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
        fp.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch - warmup))],
        milestones=[warmup])
    stop = fp.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    loss = fp.SoftmaxCrossEntropy(label_smoothing=0.1)
    t = time.perf_counter()
    history = fp.fit(model, X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=batch_size,
                     seed=seed, validation_data=val, progress=progress, callbacks=[stop],
                     scheduler=sched, scheduler_interval="step")
    seconds = time.perf_counter() - t
    accuracy = fp.evaluate(model, X_test, y_test, loss)["accuracy"]
    return {"accuracy": accuracy, "epochs_run": len(history.history["loss"]),
            "best_epoch": stop.best_epoch + 1, "seconds": seconds}


if __name__ == "__main__":
    r = run(progress=True)
    print(f"test accuracy {r['accuracy']:.4f} (best epoch {r['best_epoch']} of {r['epochs_run']} "
          f"run, {r['seconds']:.1f} s)")
