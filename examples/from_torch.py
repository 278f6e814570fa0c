"""A PyTorch model trained with fastprop: build it in torch, convert it with fp.from_torch,
train it with fp.fit, hand it back with fp.to_torch, and evaluate it in torch.

    pip install torch
    python examples/from_torch.py
"""
import numpy as np
import torch

import fastprop as fp


def torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(),
                               torch.nn.Linear(128, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10))


def main(epochs=15):
    X, y = fp.datasets.load_digits()
    X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    before = torch_model()
    model = fp.from_torch(before)             # the same layers and weights, in fastprop
    fp.fit(model, X_train, y_train, loss=fp.SoftmaxCrossEntropy(),
           optimizer=fp.Adam(model.parameters(), lr=1e-3), epochs=epochs, batch_size=32,
           progress=False)
    trained = fp.to_torch(model)              # back to torch.nn.Sequential
    trained.eval()
    with torch.no_grad():
        logits = trained(torch.from_numpy(X_test))
        test_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_test)).item()
        accuracy = (logits.argmax(1).numpy() == y_test).mean()
        untrained = (before(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean()
    print(trained)
    print(f"in torch, after fastprop's fit: test loss {test_loss:.4f}, accuracy {accuracy:.1%} "
          f"(untrained: {untrained:.1%})")
    print(f"largest difference from fastprop's outputs: "
          f"{np.abs(logits.numpy() - model(X_test)).max():.1e}")
    return model, trained, (X_test, y_test), accuracy


if __name__ == "__main__":
    main()
